"""Reading line-oriented text files (plain or gzip) with errors that name the file and line."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from .schemas import DataFormatError, check_text


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` read transparently), without line endings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        text = handle.read()
    lines = text.splitlines()  # handles \n, \r\n; a final newline adds no empty line
    return lines


def read_captions(path: str | os.PathLike, expected: int | None = None, against: str | None = None) -> list[str]:
    """Non-empty stripped caption lines of `path`, one per line.

    With `expected`, the file must have exactly that many lines (`against` names what fixes the
    count, e.g. the image split file). An empty line raises naming the file and its line number.
    """
    lines = read_lines(path)
    if expected is not None and len(lines) != expected:
        reference = f" (lines of {against})" if against else ""
        raise DataFormatError(
            f"{path}: expected {expected} lines{reference}, found {len(lines)}; "
            "caption files must be aligned line by line"
        )
    return [check_text(line, f"{path} line {number}") for number, line in enumerate(lines, start=1)]


def read_ids(path: str | os.PathLike) -> list[str]:
    """Identifiers, one per non-empty line (e.g. an image split file); duplicates are an error."""
    ids = [check_text(line, f"{path} line {n}", "id") for n, line in enumerate(read_lines(path), start=1)]
    seen: dict[str, int] = {}
    for number, visual_id in enumerate(ids, start=1):
        if visual_id in seen:
            raise DataFormatError(f"{path} line {number}: duplicate id {visual_id!r} (first on line {seen[visual_id]})")
        seen[visual_id] = number
    return ids
