"""MT noise model of the demo world, applied to the literal translation of each English caption.

A sentence is corrupted with probability `rate`; a corrupted sentence gets 1-3 edits drawn from:
a dropped word, a replaced word (wrong colour, near synonym), wrong agreement (another inflected
form of an article/adjective/verb), a local reordering (two neighbours swapped) and an
untranslated English word.

Semantic errors (`semantic_error`, a separate rate) come before the surface noise: the translation
says a wrong colour, a wrong noun or a wrong relation, fluently and with correct agreement, as real
MT does, while the English source caption stays right. This is where cross-lingual transfer can
earn its place: the stage-1 teacher compares the MT caption with the (right) English captions of
the batch, so its relations can pull the student towards the right item, whereas the visual-MT pair
alone teaches the error ("blaue Katze" paired with a picture of a red cat).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cl2cm_hf.data.demo_grammar import Clause, Token, detokenize
from cl2cm_hf.data.demo_scenes import Scene, alter_object, alterations, other_relation
from cl2cm_hf.errors import CL2CMError

NOISE_KINDS = ("drop", "replace", "agreement", "reorder", "untranslated")


def _candidates(tokens: list[Token], kind: str) -> list[int]:
    words = [i for i, t in enumerate(tokens) if t.role != "punct"]
    if kind == "drop":
        return words if len(words) > 3 else []
    if kind == "replace":
        return [i for i in words if tokens[i].alternatives]
    if kind == "agreement":
        return [i for i in words if tokens[i].forms]
    if kind == "reorder":
        return [i for i in words if i + 1 < len(tokens) and tokens[i + 1].role != "punct" and not tokens[i].glue]
    return [i for i in words if tokens[i].en and tokens[i].role in ("noun", "colour", "size", "verb")]


def _edit(tokens: list[Token], kind: str, i: int, rng: np.random.Generator) -> list[Token]:
    tokens = list(tokens)
    t = tokens[i]
    if kind == "drop":
        del tokens[i]
    elif kind == "reorder":
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    else:
        choices = {"replace": t.alternatives, "agreement": t.forms, "untranslated": (t.en,)}[kind]
        text = choices[int(rng.integers(len(choices)))]
        tokens[i] = Token(text, t.role, t.en, glue=t.glue and kind != "untranslated")
    return tokens


def add_mt_noise(tokens: list[Token], rate: float, rng: np.random.Generator) -> tuple[str, list[str]]:
    """The sentence after noise and the names of the edits applied (empty when left clean)."""
    if not 0.0 <= rate <= 1.0:
        raise CL2CMError(f"mt_noise={rate!r}; expected a rate in [0, 1]")
    applied: list[str] = []
    if rng.random() < rate:
        for _ in range(1 + int(rng.binomial(2, 0.3))):
            order = rng.permutation(len(NOISE_KINDS))
            for k in order:
                kind = NOISE_KINDS[k]
                candidates = _candidates(tokens, kind)
                if candidates:
                    tokens = _edit(tokens, kind, candidates[int(rng.integers(len(candidates)))], rng)
                    applied.append(kind)
                    break
    return detokenize(tokens), applied


def semantic_error(scene: Scene, plan: tuple[list[Clause], tuple[bool, ...]], rng: np.random.Generator,
                   ) -> tuple[Scene, tuple[list[Clause], tuple[bool, ...]], str]:
    """What a wrong translation of `plan`'s caption describes: `scene` with one object's colour or noun
    changed, or `plan` with one clause's relation changed; and the kind ("colour", "noun", "relation").
    Realise the MT sentence from the returned scene and plan; the English caption keeps the originals."""
    kinds = alterations(scene)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind != "relation":
        return alter_object(scene, int(rng.integers(len(scene.objects))), kind, rng), plan, kind
    clauses, show_size = plan
    k = int(rng.choice([i for i, clause in enumerate(clauses) if clause.relation]))
    clauses = [*clauses[:k], replace(clauses[k], relation=other_relation(clauses[k].relation, rng)), *clauses[k + 1 :]]
    return scene, (clauses, show_size), kind
