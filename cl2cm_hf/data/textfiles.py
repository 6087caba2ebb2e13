"""Reading line-oriented text files (plain or gzip) with errors that name the file and line.

A truncated or corrupted gzip file, bytes that are not UTF-8 and binary data (NUL bytes) all raise
`DataFormatError` naming the file (and the line where there is one), never a bare
``EOFError``/``UnicodeDecodeError``. Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only: the other
characters that `str.splitlines` treats as line breaks (``\\u2028``, ``\\x0c``, ...) may occur inside
a caption and must not shift the line alignment of caption files.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

from cl2cm_hf.data.schemas import DataFormatError, check_text

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, decompressed when it is a gzip file (by suffix or magic number)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if path.suffix == ".gz" and not raw:
        raise DataFormatError(f"{path}: not a complete gzip file (0 bytes); the file is truncated or corrupted")
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise DataFormatError(
                f"{path}: not a complete gzip file ({type(err).__name__}: {err}); the file is truncated or corrupted"
            ) from None
    return raw


def decode_utf8(raw: bytes, path: str | os.PathLike) -> str:
    """`raw` as UTF-8 text (a leading byte-order mark dropped); invalid bytes or NUL raise naming the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = len(_LINE_BREAK.findall(raw[: err.start].decode("utf-8", "replace"))) + 1
        raise DataFormatError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None
    if "\x00" in text:
        line = len(_LINE_BREAK.findall(text[: text.index("\x00")])) + 1
        raise DataFormatError(f"{path} line {line}: NUL byte (binary data, not a text file)")
    return text.removeprefix("\ufeff")


def split_lines(text: str) -> list[str]:
    """Lines of `text` without their endings; a final line break adds no empty line."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` read transparently), without line endings."""
    return split_lines(decode_utf8(read_bytes(path), path))


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
