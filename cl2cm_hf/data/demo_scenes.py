"""Scenes of the demo world and their fixed random "vision backbone".

A scene holds 1-3 objects (noun, colour, optional size, optional action for animate objects) and,
with several objects, relations: ``(0, rel, 1)`` and, with three, ``(2, rel, 1)`` (object 1 is the
anchor). Its visual code is a multi-hot vector (noun, noun x colour, noun x size, noun x action,
relation x noun roles); `SceneEncoder` maps codes through a random 2-layer tanh MLP whose weights
depend only on its own seed, never on the world's seed: the same "camera" for every world.

Videos: `video_schedule` makes objects enter and leave, so that no single frame shows every object
of a multi-object scene; each frame is encoded from the objects present at that time.

Changing one attribute (`alterations`: a colour, a noun or a relation) gives both a harder world's
near neighbours (`confusable_variant`) and the MT's semantic errors (`demo_mt_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cl2cm_hf.data.demo_lexicon import ACTIONS, CANONICAL_RELATION, COLOURS, INVERSE_RELATION, NOUNS, RELATIONS, SIZES
from cl2cm_hf.errors import CL2CMError

BACKBONE_SEED = 1_000_003
NOUN_KEYS = sorted(NOUNS)
COLOUR_KEYS = sorted(COLOURS)
SIZE_KEYS = sorted(SIZES)
ACTION_KEYS = sorted(ACTIONS)
RELATION_KEYS = sorted(RELATIONS)
CANONICAL_KEYS = sorted(set(CANONICAL_RELATION.values()))
OBJECT_COUNT_PROBS = (0.2, 0.4, 0.4)


@dataclass(frozen=True)
class DemoObject:
    noun: str
    colour: str
    size: str | None = None
    action: str | None = None


@dataclass(frozen=True)
class Scene:
    objects: tuple[DemoObject, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    def key(self) -> tuple:
        """Identity of what is visible: the same for captions naming objects in another order."""
        relations = []
        for a, rel, b in self.relations:
            if CANONICAL_RELATION[rel] != rel:
                a, rel, b = b, INVERSE_RELATION[rel], a
            pair = (self.objects[a].noun, self.objects[b].noun)
            relations.append((rel, *(sorted(pair) if rel == "next to" else pair)))
        return tuple(sorted((o.noun, o.colour, o.size or "", o.action or "") for o in self.objects)), tuple(sorted(relations))


def sample_scene(rng: np.random.Generator) -> Scene:
    """One random scene (distinct nouns; actions only for animate objects that captions can voice)."""
    count = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    nouns = [NOUN_KEYS[i] for i in rng.choice(len(NOUN_KEYS), size=count, replace=False)]
    objects = []
    for role, noun in enumerate(nouns):
        size = SIZE_KEYS[rng.integers(len(SIZE_KEYS))] if rng.random() < 0.8 else None
        # The anchor (object 1) is named in a prepositional phrase, where no verb can voice an action.
        can_act = NOUNS[noun].animate and role != 1
        action = ACTION_KEYS[rng.integers(len(ACTION_KEYS))] if can_act and rng.random() < 0.6 else None
        objects.append(DemoObject(noun, COLOUR_KEYS[rng.integers(len(COLOUR_KEYS))], size, action))
    subjects = [s for s in (0, 2) if s < count] if count > 1 else []
    relations = tuple((s, RELATION_KEYS[rng.integers(len(RELATION_KEYS))], 1) for s in subjects)
    return Scene(tuple(objects), relations)


def alterations(scene: Scene) -> tuple[str, ...]:
    """The one-attribute changes that apply to `scene`: a colour, a noun, and with two objects a relation."""
    return ("colour", "noun", "relation") if scene.relations else ("colour", "noun")


def alter_object(scene: Scene, index: int, kind: str, rng: np.random.Generator) -> Scene:
    """`scene` with object `index` given another colour (`kind` "colour") or another noun ("noun"):
    one not in the scene, so a definite second mention stays unambiguous, and animate if it acts."""
    o = scene.objects[index]
    if kind == "colour":
        changed = replace(o, colour=_other(COLOUR_KEYS, o.colour, rng))
    elif kind == "noun":
        taken = {x.noun for x in scene.objects}
        changed = replace(o, noun=_other([n for n in NOUN_KEYS if o.action is None or NOUNS[n].animate], taken, rng))
    else:
        raise CL2CMError(f"kind={kind!r}; expected 'colour' or 'noun'")
    return Scene(scene.objects[:index] + (changed,) + scene.objects[index + 1 :], scene.relations)


def other_relation(relation: str, rng: np.random.Generator) -> str:
    """A relation that means something else ("on" -> "under" too: the objects' roles swap)."""
    return _other(RELATION_KEYS, relation, rng)


def confusable_variant(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with one colour, noun or relation changed: a neighbour that only that word tells apart."""
    kinds = alterations(scene)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind != "relation":
        return alter_object(scene, int(rng.integers(len(scene.objects))), kind, rng)
    k = int(rng.integers(len(scene.relations)))
    subject, relation, anchor = scene.relations[k]
    relations = scene.relations[:k] + ((subject, other_relation(relation, rng), anchor),) + scene.relations[k + 1 :]
    return Scene(scene.objects, relations)


def _other(keys: list[str], exclude: str | set[str], rng: np.random.Generator) -> str:
    exclude = {exclude} if isinstance(exclude, str) else exclude
    choices = [k for k in keys if k not in exclude]
    return choices[int(rng.integers(len(choices)))]


class SceneEncoder:
    """The fixed "vision backbone": scene code -> tanh MLP -> features (before observation noise)."""

    def __init__(self, feature_dim: int = 128, hidden_dim: int = 256, seed: int = BACKBONE_SEED):
        n, c, s, a, r = len(NOUN_KEYS), len(COLOUR_KEYS), len(SIZE_KEYS), len(ACTION_KEYS), len(CANONICAL_KEYS)
        self._offsets = np.cumsum([0, n, n * c, n * s, n * a, r * n])  # noun, colour, size, action, rel-subject, rel-object
        self.code_dim = int(self._offsets[-1] + r * n)
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0.0, 1.0 / np.sqrt(6.0), size=(self.code_dim, hidden_dim))
        self.b1 = rng.normal(0.0, 0.3, size=hidden_dim)
        self.w2 = rng.normal(0.0, 1.0 / np.sqrt(0.4 * hidden_dim), size=(hidden_dim, feature_dim))
        self.feature_dim = feature_dim

    def code(self, scene: Scene, present: set[int] | None = None) -> np.ndarray:
        """Multi-hot code of the objects in `present` (all by default) and relations among them."""
        present = set(range(len(scene.objects))) if present is None else present
        x = np.zeros(self.code_dim)
        n, c, s, a = len(NOUN_KEYS), len(COLOUR_KEYS), len(SIZE_KEYS), len(ACTION_KEYS)
        for i in sorted(present):
            o = scene.objects[i]
            noun = NOUN_KEYS.index(o.noun)
            x[self._offsets[0] + noun] = 1.0
            x[self._offsets[1] + noun * c + COLOUR_KEYS.index(o.colour)] = 1.0
            if o.size:
                x[self._offsets[2] + noun * s + SIZE_KEYS.index(o.size)] = 0.8
            if o.action:
                x[self._offsets[3] + noun * a + ACTION_KEYS.index(o.action)] = 0.8
        for subject, rel, obj in scene.relations:
            if subject not in present or obj not in present:
                continue
            if CANONICAL_RELATION[rel] != rel:
                subject, rel, obj = obj, INVERSE_RELATION[rel], subject
            roles = [(subject, obj), (obj, subject)] if rel == "next to" else [(subject, obj)]
            r = CANONICAL_KEYS.index(rel)
            for first, second in roles:
                x[self._offsets[4] + r * n + NOUN_KEYS.index(scene.objects[first].noun)] = 0.6
                x[self._offsets[5] + r * n + NOUN_KEYS.index(scene.objects[second].noun)] = 0.6
        return x

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return np.tanh(codes @ self.w1 + self.b1) @ self.w2


def video_schedule(scene: Scene, num_frames: int, rng: np.random.Generator) -> list[set[int]]:
    """Objects present in each of `num_frames` (>= 4) frames.

    One object: visible over a long middle stretch. Two: the first leaves after the second has
    entered (they overlap, neither is there throughout). Three: the anchor overlaps both others,
    which are never on screen together. Which of objects 0/2 comes first is random.
    """
    t = num_frames
    count = len(scene.objects)
    if count == 1:
        start = int(rng.integers(0, t // 3 + 1))
        end = int(rng.integers(max(start + 2, t - t // 3), t + 1))
        spans = {0: (start, end)}
    elif count == 2:
        enter = int(rng.integers(1, t - 1))  # second object enters
        leave = int(rng.integers(enter + 1, t))  # first object leaves
        first, second = (0, 1) if rng.random() < 0.5 else (1, 0)
        spans = {first: (0, leave), second: (enter, t)}
    else:
        anchor_in = int(rng.integers(0, t - 2))
        first_out = int(rng.integers(anchor_in + 1, t - 1))
        last_in = int(rng.integers(first_out, t))
        anchor_out = int(rng.integers(last_in + 1, t + 1))
        first, last = (0, 2) if rng.random() < 0.5 else (2, 0)
        spans = {first: (0, first_out), 1: (anchor_in, anchor_out), last: (last_in, t)}
    return [{i for i, (a, b) in spans.items() if a <= frame < b} for frame in range(t)]
