"""Pictures of demo-world scenes, so that a vision tower can be trained on pixels without a download.

Each noun is a silhouette built from PIL polygons and ellipses (facing right, or mirrored), filled
with its lexicon colour and outlined in a darker shade; the size attribute scales it; relations place
it against the anchor (object 1): "on" stands on its top, "under" below it (between the legs of a
table or chair when it fits), "next to" beside it on the same ground, "in front of" lower and drawn
over it, "behind" higher and drawn under it. Actions add a magenta mark (magenta is no lexicon colour,
so a mark never reads as an object): speed lines, "Z"s, a lift with motion lines, a mat, a bowl.

Everything random (facing, gaps, offsets, where the group stands, the background's tones and grain)
comes from the generator passed in, so the same generator state gives the same pixels. Drawing
happens at `SUPERSAMPLE` times the requested side and is reduced with a box filter: edges stay
smooth at 64 px, where a ViT patch covers only a few pixels of an object. A video is one fixed
camera: the layout and background are drawn once and each frame shows the objects present then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cl2cm_hf.data.demo_lexicon import COLOURS, NOUNS, RELATIONS
from cl2cm_hf.data.demo_scenes import DemoObject, Scene
from cl2cm_hf.errors import CL2CMError

SUPERSAMPLE = 4
COLOUR_RGB = {
    "red": (210, 35, 35),
    "blue": (35, 75, 215),
    "green": (40, 160, 60),
    "yellow": (240, 205, 30),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "grey": (130, 130, 130),
}
SIZE_SCALE = {"small": 0.75, None: 1.0, "big": 1.3}
ACTION_RGB = (214, 40, 190)  # magenta, the colour of every action mark
_UNIT = 0.4  # height of a plain object of height factor 1, as a fraction of the side
_MARGIN = 0.05  # free border around the group, as a fraction of the side
_WALL, _FLOOR = (178, 168, 200), (200, 178, 140)
_DARK, _PALE, _WOOD, _LEAF = (45, 45, 45), (215, 230, 240), (110, 72, 40), (50, 125, 55)

assert set(COLOUR_RGB) == set(COLOURS), "every lexicon colour needs an RGB value"


@dataclass(frozen=True)
class _Op:
    """One primitive in scene units: ``points`` are polygon/line vertices or two box corners."""

    kind: str  # "polygon", "line", "ellipse", "ring" (ellipse outline), "chord" (a half-disc, flat side down)
    points: tuple[tuple[float, float], ...]
    fill: tuple[int, int, int]
    width: float = 0.0  # lines and rings, in scene units
    outlined: bool = True  # part of the silhouette (gets the dark contour) rather than a mark


class _Pen:
    """Maps a shape's unit square (u right, v down, base at v=1, facing right) onto its box."""

    def __init__(self, x0: float, y0: float, w: float, h: float, colour: tuple[int, int, int], mirrored: bool):
        self.x0, self.y0, self.w, self.h, self.colour, self.mirrored = x0, y0, w, h, colour, mirrored
        self.ops: list[_Op] = []

    def _point(self, u: float, v: float) -> tuple[float, float]:
        return (self.x0 + (1.0 - u if self.mirrored else u) * self.w, self.y0 + v * self.h)

    def shade(self, factor: float) -> tuple[int, int, int]:
        """The colour darkened (factor < 1) or lightened (> 1, plus an offset so that black lightens too)."""
        return tuple(int(min(255, c * factor + (30 if factor > 1 else 0))) for c in self.colour)

    def _box(self, kind: str, u0: float, v0: float, u1: float, v1: float, fill, width: float = 0.0) -> None:
        (xa, ya), (xb, yb) = self._point(u0, v0), self._point(u1, v1)
        self.ops.append(_Op(kind, ((min(xa, xb), ya), (max(xa, xb), yb)), fill or self.colour, width * self.h))

    def poly(self, points: Sequence[tuple[float, float]], fill=None) -> None:
        self.ops.append(_Op("polygon", tuple(self._point(u, v) for u, v in points), fill or self.colour))

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill=None) -> None:
        self.poly(((u0, v0), (u1, v0), (u1, v1), (u0, v1)), fill)

    def ellipse(self, u0: float, v0: float, u1: float, v1: float, fill=None) -> None:
        self._box("ellipse", u0, v0, u1, v1, fill)

    def chord(self, u0: float, v0: float, u1: float, v1: float, fill=None) -> None:
        self._box("chord", u0, v0, u1, v1, fill)

    def ring(self, u0: float, v0: float, u1: float, v1: float, width: float, fill=None) -> None:
        self._box("ring", u0, v0, u1, v1, fill, width)

    def line(self, points: Sequence[tuple[float, float]], width: float, fill=None) -> None:
        self.ops.append(_Op("line", tuple(self._point(u, v) for u, v in points), fill or self.colour, width * self.h))


# --- silhouettes ------------------------------------------------------------------------------
def _dog(p: _Pen) -> None:
    p.line(((0.16, 0.42), (0.06, 0.24), (0.02, 0.06)), 0.08)
    p.ellipse(0.12, 0.3, 0.8, 0.66)
    for u in (0.18, 0.32, 0.58, 0.7):
        p.rect(u, 0.55, u + 0.1, 1.0)
    p.poly(((0.62, 0.45), (0.7, 0.18), (0.86, 0.22), (0.8, 0.5)))
    p.ellipse(0.68, 0.06, 0.92, 0.38)
    p.ellipse(0.82, 0.18, 1.0, 0.34)
    p.poly(((0.7, 0.1), (0.8, 0.08), (0.77, 0.44), (0.68, 0.38)), p.shade(0.65))


def _cat(p: _Pen) -> None:
    p.line(((0.2, 0.94), (0.03, 0.84), (0.0, 0.6), (0.06, 0.45)), 0.09)
    p.ellipse(0.1, 0.38, 0.75, 1.0)
    p.rect(0.5, 0.62, 0.7, 1.0)
    p.ellipse(0.38, 0.12, 0.9, 0.52)
    p.poly(((0.41, 0.26), (0.44, 0.0), (0.6, 0.15)))
    p.poly(((0.7, 0.15), (0.86, 0.0), (0.88, 0.28)))


def _horse(p: _Pen) -> None:
    p.poly(((0.16, 0.34), (0.0, 0.66), (0.07, 0.68), (0.18, 0.44)), p.shade(0.6))
    p.ellipse(0.12, 0.3, 0.78, 0.6)
    for u in (0.16, 0.3, 0.6, 0.7):
        p.rect(u, 0.5, u + 0.075, 1.0)
    p.poly(((0.6, 0.42), (0.76, 0.06), (0.88, 0.1), (0.8, 0.48)))
    p.poly(((0.74, 0.04), (0.86, 0.0), (1.0, 0.22), (0.93, 0.29), (0.8, 0.17)))
    p.line(((0.62, 0.38), (0.75, 0.06)), 0.05, p.shade(0.6))


def _bird(p: _Pen) -> None:
    p.poly(((0.24, 0.5), (0.0, 0.36), (0.02, 0.64)))
    p.line(((0.4, 0.78), (0.38, 1.0)), 0.05, _DARK)
    p.line(((0.52, 0.78), (0.54, 1.0)), 0.05, _DARK)
    p.ellipse(0.15, 0.3, 0.76, 0.84)
    p.ellipse(0.58, 0.12, 0.88, 0.46)
    p.poly(((0.85, 0.23), (1.0, 0.31), (0.85, 0.37)), (240, 150, 20))
    p.poly(((0.28, 0.52), (0.42, 0.0), (0.62, 0.5)), p.shade(0.75))


def _cow(p: _Pen) -> None:
    p.line(((0.13, 0.32), (0.05, 0.62)), 0.05)
    p.rect(0.12, 0.26, 0.8, 0.66)
    for u in (0.14, 0.28, 0.6, 0.7):
        p.rect(u, 0.6, u + 0.09, 1.0)
    p.ellipse(0.5, 0.6, 0.62, 0.74, (235, 160, 170))
    p.rect(0.76, 0.2, 0.98, 0.54)
    p.poly(((0.77, 0.22), (0.75, 0.04), (0.83, 0.2)), (235, 225, 200))
    p.poly(((0.91, 0.2), (0.97, 0.03), (0.96, 0.22)), (235, 225, 200))
    p.ellipse(0.22, 0.3, 0.4, 0.5, p.shade(0.5))
    p.ellipse(0.5, 0.38, 0.64, 0.58, p.shade(0.5))


def _car(p: _Pen) -> None:
    p.poly(((0.24, 0.44), (0.34, 0.04), (0.68, 0.04), (0.82, 0.44)))
    p.poly(((0.0, 0.42), (0.86, 0.38), (1.0, 0.5), (1.0, 0.82), (0.0, 0.82)))
    p.poly(((0.33, 0.4), (0.39, 0.12), (0.5, 0.12), (0.5, 0.4)), _PALE)
    p.poly(((0.54, 0.4), (0.54, 0.12), (0.65, 0.12), (0.74, 0.4)), _PALE)
    for u in (0.12, 0.68):
        p.ellipse(u, 0.62, u + 0.2, 1.0, _DARK)
        p.ellipse(u + 0.06, 0.74, u + 0.14, 0.88, _PALE)


def _house(p: _Pen) -> None:
    p.rect(0.7, 0.06, 0.82, 0.3, p.shade(0.65))
    p.rect(0.12, 0.45, 0.88, 1.0)
    p.poly(((0.0, 0.5), (0.5, 0.0), (1.0, 0.5)), p.shade(0.8))
    p.rect(0.42, 0.68, 0.58, 1.0, _WOOD)
    p.rect(0.2, 0.58, 0.34, 0.72, _PALE)
    p.rect(0.66, 0.58, 0.8, 0.72, _PALE)


def _ball(p: _Pen) -> None:
    p.ellipse(0.0, 0.0, 1.0, 1.0)
    p.line(((0.06, 0.55), (0.35, 0.44), (0.65, 0.44), (0.94, 0.55)), 0.06, p.shade(0.55))
    p.ellipse(0.22, 0.14, 0.4, 0.3, p.shade(1.3))


def _tree(p: _Pen) -> None:
    p.rect(0.42, 0.55, 0.58, 1.0, _WOOD)
    p.ellipse(0.0, 0.16, 0.6, 0.66)
    p.ellipse(0.4, 0.16, 1.0, 0.66)
    p.ellipse(0.15, 0.0, 0.85, 0.5)


def _box(p: _Pen) -> None:
    p.rect(0.0, 0.3, 0.72, 1.0)
    p.poly(((0.0, 0.3), (0.28, 0.0), (1.0, 0.0), (0.72, 0.3)), p.shade(1.25))
    p.poly(((0.72, 0.3), (1.0, 0.0), (1.0, 0.7), (0.72, 1.0)), p.shade(0.65))
    p.line(((0.36, 0.3), (0.36, 1.0)), 0.06, p.shade(0.55))


def _chair(p: _Pen) -> None:
    p.rect(0.05, 0.0, 0.22, 0.55)
    p.rect(0.05, 0.5, 0.15, 1.0)
    p.rect(0.05, 0.48, 0.95, 0.6)
    p.rect(0.83, 0.58, 0.93, 1.0)
    p.line(((0.08, 0.12), (0.2, 0.12)), 0.04, p.shade(0.6))


def _lamp(p: _Pen) -> None:
    p.rect(0.45, 0.38, 0.55, 0.92, p.shade(0.7))
    p.ellipse(0.15, 0.86, 0.85, 1.0, p.shade(0.7))
    p.ellipse(0.38, 0.3, 0.62, 0.48, (255, 240, 170))
    p.poly(((0.22, 0.0), (0.78, 0.0), (1.0, 0.38), (0.0, 0.38)))


def _boat(p: _Pen) -> None:
    p.line(((0.5, 0.0), (0.5, 0.6)), 0.04, _WOOD)
    p.poly(((0.54, 0.02), (0.54, 0.52), (0.88, 0.52)), (235, 230, 215))
    p.poly(((0.46, 0.1), (0.46, 0.52), (0.2, 0.52)), (235, 230, 215))
    p.poly(((0.0, 0.54), (1.0, 0.54), (0.84, 0.98), (0.14, 0.98)))
    p.line(((0.08, 0.66), (0.93, 0.66)), 0.04, p.shade(0.55))


def _flower(p: _Pen) -> None:
    p.line(((0.5, 0.4), (0.5, 1.0)), 0.07, _LEAF)
    p.poly(((0.5, 0.78), (0.18, 0.6), (0.5, 0.68)), _LEAF)
    p.poly(((0.5, 0.88), (0.84, 0.7), (0.5, 0.8)), _LEAF)
    for k in range(6):
        a = 2 * np.pi * k / 6
        u, v = 0.5 + 0.28 * np.cos(a), 0.3 + 0.17 * np.sin(a)
        p.ellipse(u - 0.2, v - 0.13, u + 0.2, v + 0.13)
    p.ellipse(0.37, 0.22, 0.63, 0.38, _WOOD)


def _table(p: _Pen) -> None:
    p.rect(0.06, 0.12, 0.14, 1.0)
    p.rect(0.86, 0.12, 0.94, 1.0)
    p.rect(0.06, 0.12, 0.94, 0.24, p.shade(0.7))
    p.rect(0.0, 0.0, 1.0, 0.16)


def _cup(p: _Pen) -> None:
    p.ellipse(0.0, 0.88, 0.82, 1.0, p.shade(0.75))
    p.ring(0.52, 0.22, 0.98, 0.72, 0.09)
    p.poly(((0.05, 0.06), (0.77, 0.06), (0.67, 0.94), (0.15, 0.94)))
    p.ellipse(0.05, 0.0, 0.77, 0.13, p.shade(0.55))


def _book(p: _Pen) -> None:
    p.poly(((0.0, 0.1), (0.5, 0.26), (0.5, 1.0), (0.0, 0.84)))
    p.poly(((1.0, 0.1), (0.5, 0.26), (0.5, 1.0), (1.0, 0.84)))
    for v in (0.35, 0.5, 0.65):
        p.line(((0.08, v - 0.04), (0.42, v + 0.06)), 0.04, p.shade(0.55))
        p.line(((0.92, v - 0.04), (0.58, v + 0.06)), 0.04, p.shade(0.55))
    p.line(((0.5, 0.24), (0.5, 1.0)), 0.05, p.shade(0.45))


def _umbrella(p: _Pen) -> None:
    p.line(((0.5, 0.1), (0.5, 0.9)), 0.05, _DARK)
    p.line(((0.5, 0.9), (0.54, 0.99), (0.63, 0.99), (0.67, 0.9)), 0.05, _DARK)
    p.line(((0.5, 0.0), (0.5, 0.06)), 0.05, _DARK)
    p.chord(0.0, 0.04, 1.0, 0.5)
    for u in (0.2, 0.8):
        p.line(((0.5, 0.06), (u, 0.5)), 0.04, p.shade(0.6))


@dataclass(frozen=True)
class _Shape:
    draw: Callable[[_Pen], None]
    aspect: float  # width / height
    height: float  # height of the plain (size-less) object in units
    room: float = 0.0  # fraction of the height free underneath (table, chair, umbrella)
    top: float = 0.0  # where an object "on" it stands, from the top (an animal's back, a chair's seat)


SHAPES = {
    "dog": _Shape(_dog, 1.45, 0.8, top=0.3),
    "cat": _Shape(_cat, 0.8, 0.85, top=0.1),
    "horse": _Shape(_horse, 1.15, 1.2, top=0.3),
    "bird": _Shape(_bird, 1.1, 0.65, top=0.3),
    "cow": _Shape(_cow, 1.5, 0.9, top=0.26),
    "car": _Shape(_car, 1.9, 0.75),
    "house": _Shape(_house, 1.0, 1.4),
    "ball": _Shape(_ball, 1.0, 0.65),
    "tree": _Shape(_tree, 0.8, 1.5),
    "box": _Shape(_box, 1.1, 0.8),
    "chair": _Shape(_chair, 0.7, 1.0, room=0.4, top=0.48),
    "lamp": _Shape(_lamp, 0.6, 1.2),
    "boat": _Shape(_boat, 1.6, 1.0),
    "flower": _Shape(_flower, 0.6, 0.9),
    "table": _Shape(_table, 1.6, 0.85, room=0.76),
    "cup": _Shape(_cup, 1.0, 0.65),
    "book": _Shape(_book, 1.4, 0.65, top=0.1),
    "umbrella": _Shape(_umbrella, 1.0, 1.05, room=0.5),
}
assert set(SHAPES) == set(NOUNS), "every lexicon noun needs a silhouette"


# --- action marks ----------------------------------------------------------------------------
def _mark_ops(action: str | None, x0: float, base: float, w: float, h: float, facing: int) -> list[_Op]:
    """The action's mark around the object box ``[x0, x0 + w] x [base - h, base]`` (scene units)."""
    if action is None:
        return []
    front, back = (x0 + w, x0) if facing > 0 else (x0, x0 + w)
    t = 0.07 * h

    def line(points, width=t):
        return _Op("line", tuple(points), ACTION_RGB, width, outlined=False)

    if action == "running":
        return [line(((back - facing * 0.12 * w, base - f * h), (back - facing * (0.12 + n) * w, base - f * h)))
                for f, n in ((0.75, 0.3), (0.5, 0.45), (0.25, 0.3))]
    if action == "sleeping":  # two "Z"s rising over the head
        ops = []
        for k, s in enumerate((0.24 * h, 0.17 * h)):
            x, y = front + facing * (k * 0.3 * h - 0.1 * w), base - 1.1 * h - k * 0.3 * h
            left, right = sorted((x, x + facing * s))
            ops.append(line(((left, y - s), (right, y - s), (left, y), (right, y)), 0.05 * h))
        return ops
    if action == "jumping":  # the object is drawn lifted (see `_object_ops`); motion lines below it
        return [line(((x0 + f * w, base + 0.04 * h), (x0 + f * w, base + 0.26 * h))) for f in (0.3, 0.5, 0.7)]
    if action == "sitting":
        return [_Op("ellipse", ((x0 - 0.1 * w, base - 0.06 * h), (x0 + 1.1 * w, base + 0.08 * h)), ACTION_RGB, outlined=False)]
    if action == "eating":  # a bowl in front of the head
        near, far = front + facing * 0.02 * w, front + facing * 0.42 * w
        inset = facing * 0.06 * w
        bowl = ((near, base - 0.2 * h), (far, base - 0.2 * h), (far - inset, base), (near + inset, base))
        return [_Op("polygon", bowl, ACTION_RGB, outlined=False)]
    raise CL2CMError(f"no mark for action {action!r}")


# --- layout -------------------------------------------------------------------------------
_LAYER = {"behind": 0, "under": 1, "on": 3, "next to": 3, "in front of": 4}  # drawing order; the anchor is 2
assert set(_LAYER) == set(RELATIONS), "every lexicon relation needs a placement"
@dataclass(frozen=True)
class _Placed:
    index: int
    obj: DemoObject
    w: float
    h: float
    cx: float
    base: float
    facing: int  # +1 right, -1 left


def _size(obj: DemoObject) -> tuple[float, float]:
    shape = SHAPES[obj.noun]
    h = shape.height * SIZE_SCALE[obj.size]
    return shape.aspect * h, h


def _layout(scene: Scene, rng: np.random.Generator) -> list[_Placed]:
    """Objects placed against the anchor (object 1), in drawing order (back to front), scene units."""
    facings = [1 if rng.random() < 0.5 else -1 for _ in scene.objects]
    sizes = [_size(o) for o in scene.objects]
    if len(scene.objects) == 1:
        (w, h), = sizes
        return [_Placed(0, scene.objects[0], w, h, 0.0, 0.0, facings[0])]
    (aw, ah), anchor = sizes[1], SHAPES[scene.objects[1].noun]
    relations = {subject: "next to" for subject in range(0, len(scene.objects), 2)}  # unrelated: beside it
    for subject, rel, obj in scene.relations:
        if obj != 1 or subject not in relations or rel not in _LAYER:
            raise CL2CMError(f"relation {(subject, rel, obj)} of {scene}: expected (0 or 2, one of {sorted(_LAYER)}, 1)")
        relations[subject] = rel
    side = 1 if rng.random() < 0.5 else -1
    sides = {0: side, 2: -side}  # the two subjects go to opposite sides of the anchor
    shared = len(relations) == 2 and relations[0] == relations[2]
    gap = rng.uniform(0.18, 0.32)

    def centre(subject: int) -> float:
        w = sizes[subject][0]
        return sides[subject] * (w + gap) / 2 if shared else rng.uniform(-0.15, 0.15) * aw

    placed, ground = {}, 0.0
    for subject in sorted(relations, key=lambda s: relations[s] != "under"):  # "under" sets the ground
        rel, (w, h) = relations[subject], sizes[subject]
        if rel == "on":
            cx, base = centre(subject), -(1.0 - anchor.top) * ah
        elif rel == "under":
            top = (1.0 - SHAPES[scene.objects[subject].noun].top) * h  # the anchor rests on its surface
            cx, base = centre(subject), max(0.0, top - anchor.room * ah)
            ground = max(ground, base)
        elif rel == "next to":
            cx, base = sides[subject] * ((aw + w) / 2 + gap), ground
        else:  # "in front of" / "behind": overlapping, lower (nearer) or higher (farther)
            depth = rng.uniform(0.3, 0.45) * (1 if rel == "in front of" else -1)
            cx, base = sides[subject] * rng.uniform(0.25, 0.45) * aw, ground + depth
        placed[subject] = _Placed(subject, scene.objects[subject], w, h, cx, base, facings[subject])
    placed[1] = _Placed(1, scene.objects[1], aw, ah, 0.0, 0.0, facings[1])
    return sorted(placed.values(), key=lambda p: (2 if p.index == 1 else _LAYER[relations[p.index]], p.index))


def _object_ops(p: _Placed) -> list[_Op]:
    """Silhouette and action mark of one placed object."""
    lift = 0.3 * p.h if p.obj.action == "jumping" else 0.0
    pen = _Pen(p.cx - p.w / 2, p.base - lift - p.h, p.w, p.h, COLOUR_RGB[p.obj.colour], p.facing < 0)
    SHAPES[p.obj.noun].draw(pen)
    return _mark_ops(p.obj.action, p.cx - p.w / 2, p.base - lift, p.w, p.h, p.facing) + pen.ops


# --- drawing -------------------------------------------------------------------------------
def _draw(draw: ImageDraw.ImageDraw, op: _Op, transform: Callable[[float, float], tuple[float, float]], scale: float,
          outline: tuple[int, int, int] | None = None) -> None:
    """Draw `op`; with `outline`, draw its contour pass instead (the op grown by one pixel in that colour)."""
    points = [transform(x, y) for x, y in op.points]
    pad = SUPERSAMPLE if outline else 0
    fill = outline or op.fill
    width = max(1, round(op.width * scale))
    if op.kind == "polygon":
        draw.polygon(points, fill=fill)
        if pad:  # a centred stroke grows the polygon by `pad` on every side
            draw.line([*points, points[0]], fill=fill, width=2 * pad, joint="curve")
    elif op.kind == "line":
        draw.line(points, fill=fill, width=width + 2 * pad, joint="curve")
    else:
        box = [points[0][0] - pad, points[0][1] - pad, points[1][0] + pad, points[1][1] + pad]
        if op.kind == "ellipse":
            draw.ellipse(box, fill=fill)
        elif op.kind == "chord":
            draw.chord([box[0], box[1], box[2], 2 * box[3] - box[1]], 180, 360, fill=fill)
        else:  # ring
            draw.ellipse(box, outline=fill, width=width + 2 * pad)


def _background(side: int, rng: np.random.Generator) -> Image.Image:
    jitter = rng.integers(-12, 13, size=2)
    wall, floor = (tuple(int(c + j) for c in tone) for tone, j in zip((_WALL, _FLOOR), jitter))
    horizon = int(side * rng.uniform(0.38, 0.55))
    image = Image.new("RGB", (side, side), floor)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, side, horizon], fill=wall)
    draw.rectangle([0, horizon, side, horizon + max(1, side // 80)], fill=tuple(int(c * 0.8) for c in wall))
    return image


def scene_rng(scene: Scene) -> np.random.Generator:
    """A generator determined by the scene alone (its repr), for pictures drawn without a world seed."""
    digest = hashlib.sha256(repr(scene).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def render_video(scene: Scene, schedule: Sequence[set[int]], size: int = 64,
                 rng: np.random.Generator | None = None) -> list[Image.Image]:
    """Frames of `scene` (RGB, `size` x `size`), frame ``t`` showing the objects in ``schedule[t]``.

    One layout, background and grain for all frames (a fixed camera), so objects enter and leave
    exactly as `demo_scenes.video_schedule` says. `rng` defaults to `scene_rng(scene)`.
    """
    if size < 16:
        raise CL2CMError(f"size={size}; expected >= 16 pixels for the silhouettes to stay visible")
    unknown = {i for present in schedule for i in present} - set(range(len(scene.objects)))
    if unknown:
        raise CL2CMError(f"schedule names objects {sorted(unknown)}; the scene has {len(scene.objects)}")
    rng = scene_rng(scene) if rng is None else rng
    placed = _layout(scene, rng)
    ops = [(p, _object_ops(p)) for p in placed]
    xs = [x for _, object_ops in ops for op in object_ops for x, _ in op.points]
    ys = [y for _, object_ops in ops for op in object_ops for _, y in op.points]
    side = size * SUPERSAMPLE
    free = side * (1 - 2 * _MARGIN)
    ground = side * rng.uniform(0.86, 0.93)
    scale = min(_UNIT * side, free / (max(xs) - min(xs)), (ground - _MARGIN * side) / (max(ys) - min(ys)))
    left = _MARGIN * side + rng.uniform(0.0, max(0.0, free - scale * (max(xs) - min(xs))))

    def transform(x: float, y: float) -> tuple[float, float]:
        return left + scale * (x - min(xs)), ground - scale * (max(ys) - y)

    background = _background(side, rng)
    grain = rng.integers(-4, 5, size=(size, size, 1))
    frames = []
    for present in schedule:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        for p, object_ops in ops:
            if p.index in present:
                contour = tuple(int(c * 0.45) for c in COLOUR_RGB[p.obj.colour])
                for op in object_ops:
                    if op.outlined:
                        _draw(draw, op, transform, scale, contour)
                for op in object_ops:
                    _draw(draw, op, transform, scale)
        small = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.int16)
        frames.append(Image.fromarray(np.clip(small + grain, 0, 255).astype(np.uint8)))
    return frames


def render_scene(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """The whole scene as one RGB picture (`render_video` with every object present)."""
    return render_video(scene, [set(range(len(scene.objects)))], size, rng)[0]


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str], columns: int = 4, zoom: int = 3) -> Image.Image:
    """Pictures (enlarged `zoom` times, pixels kept square) above their wrapped captions, for a look
    at what the vision tower sees. Text uses Pillow's bundled font, not the system's."""
    font = ImageFont.load_default(size=11)
    side = images[0].width * zoom
    cell_w, text_h = side + 12, 4 * 13 + 6
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * (side + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (image, caption) in enumerate(zip(images, captions)):
        x, y = (k % columns) * cell_w + 6, (k // columns) * (side + text_h) + 4
        sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (x, y))
        lines, line = [], ""
        for word in caption.split():
            if line and draw.textlength(f"{line} {word}", font=font) > side:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        draw.multiline_text((x, y + side + 3), "\n".join([*lines, line][:4]), fill=(0, 0, 0), font=font, spacing=2)
    return sheet

