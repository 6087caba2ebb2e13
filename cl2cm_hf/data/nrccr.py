"""NRCCR caption files: one ``<visual_id>#<tag>#<k> <text>`` per line (``video123#enc#0 a man plays guitar``).

The tag names the source of the caption (``enc`` for the original English, a translation tag for
MT files); the pair builder therefore joins a source file and its translation on
``(visual_id, k)``, not on the tag.
"""

from __future__ import annotations

import os
import re

from datasets import Dataset

from cl2cm_hf.data.schemas import DataFormatError, check_text, make_pairs, make_queries, rows_to_dataset
from cl2cm_hf.data.textfiles import read_lines
from cl2cm_hf.errors import CL2CMError

_CAPTION_ID = re.compile(r"^(?P<visual>[^#\s]+)#(?P<tag>[^#\s]+)#(?P<k>\d+)$")


def parse_nrccr_line(line: str, where: str) -> tuple[str, str, str, int]:
    """``(visual_id, text, caption_id, k)`` of one caption line; `where` names file and line in errors."""
    expected = "expected '<visual_id>#<tag>#<k> <caption>', e.g. 'video123#enc#0 a man plays guitar'"
    fields = line.strip().split(maxsplit=1)
    if not fields:
        raise DataFormatError(f"{where}: empty line ({expected})")
    caption_id = fields[0]
    if "#" not in caption_id:
        raise DataFormatError(f"{where}: line has no caption id: {line.strip()[:60]!r} ({expected})")
    parts = _CAPTION_ID.match(caption_id)
    if parts is None:
        raise DataFormatError(f"{where}: malformed caption id {caption_id!r} ({expected}, k an integer)")
    if len(fields) < 2:
        raise DataFormatError(f"{where}: no caption after the id {caption_id!r} ({expected})")
    return parts["visual"], check_text(fields[1], where), caption_id, int(parts["k"])


def _read(path: str | os.PathLike) -> list[tuple[str, str, str, int]]:
    rows = [parse_nrccr_line(line, f"{path} line {n}") for n, line in enumerate(read_lines(path), start=1)]
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if row[2] in seen:
            raise DataFormatError(f"{path} line {number}: duplicate caption id {row[2]!r} (first on line {seen[row[2]]})")
        seen[row[2]] = number
    if not rows:
        raise DataFormatError(f"{path}: no captions")
    return rows


def load_nrccr_captions(path: str | os.PathLike) -> Dataset:
    """Caption rows ``(visual_id, text, caption_id)`` of one NRCCR file, in file order."""
    rows = _read(path)
    return rows_to_dataset(
        "caption",
        {"visual_id": [r[0] for r in rows], "text": [r[1] for r in rows], "caption_id": [r[2] for r in rows]},
        str(path),
    )


def nrccr_queries(path: str | os.PathLike, lang: str) -> Dataset:
    """Query rows ``(visual_id, text, lang)`` of one NRCCR file (e.g. human target-language test captions)."""
    rows = _read(path)
    return make_queries({"visual_id": [r[0] for r in rows], "text": [r[1] for r in rows], "lang": [lang] * len(rows)}, str(path))


def nrccr_pairs(
    source_path: str | os.PathLike, target_path: str | os.PathLike, target_lang: str, on_missing: str = "error"
) -> Dataset:
    """Translated pairs from a source caption file and its translation, joined on ``(visual_id, k)``.

    Rows follow the source file; ``caption_id`` is the source caption id. A source caption without a
    translation (or the reverse) raises naming the first such id, unless ``on_missing="drop"``.
    """
    if on_missing not in ("error", "drop"):
        raise CL2CMError(f"on_missing={on_missing!r}; expected 'error' or 'drop'")
    sources, targets = _read(source_path), _read(target_path)
    by_key = {(r[0], r[3]): r for r in targets}
    if on_missing == "error":
        source_keys = {(r[0], r[3]) for r in sources}
        sides = ((source_path, sources, target_path, by_key), (target_path, targets, source_path, source_keys))
        for path, rows, other, other_keys in sides:
            lonely = [r for r in rows if (r[0], r[3]) not in other_keys]
            if lonely:
                raise DataFormatError(
                    f"{path}: caption {lonely[0][2]!r} has no counterpart (visual_id={lonely[0][0]!r}, k={lonely[0][3]}) "
                    f"in {other} ({len(lonely)} unmatched captions)"
                )
    matched = [(s, by_key[(s[0], s[3])]) for s in sources if (s[0], s[3]) in by_key]
    if not matched:
        raise DataFormatError(f"{source_path} and {target_path}: no caption ids in common")
    return make_pairs(
        {
            "visual_id": [s[0] for s, _ in matched],
            "source_text": [s[1] for s, _ in matched],
            "target_text": [t[1] for _, t in matched],
            "target_lang": [target_lang] * len(matched),
            "caption_id": [s[2] for s, _ in matched],
        },
        f"{source_path} + {target_path}",
    )
