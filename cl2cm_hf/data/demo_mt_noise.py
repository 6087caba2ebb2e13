"""MT noise model of the demo world, applied to the literal translation of each English caption.

A sentence is corrupted with probability `rate`; a corrupted sentence gets 1-3 edits drawn from:
a dropped word, a replaced word (wrong colour, near synonym), wrong agreement (another inflected
form of an article/adjective/verb), a local reordering (two neighbours swapped) and an
untranslated English word.
"""

from __future__ import annotations

import numpy as np

from .demo_grammar import Token, detokenize

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
        raise ValueError(f"mt_noise={rate!r}; expected a rate in [0, 1]")
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
