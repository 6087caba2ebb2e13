"""A saved `VisualFeatureStore` read a block of rows at a time, for a job over more rows than it may
hold (``cl2cm-index --features`` over millions of rows): the ids are parsed from ``ids.json`` one at a
time (never one list of them all) and checked against the digest the store was saved with, and rows
are read through a memory map that is closed before the block is returned, so the file's pages do not
stay in the process."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open

from cl2cm_hf.data.features import FEATURES_FILE, IDS_FILE, VisualFeatureStore, _mmap_safetensors, read_id_list
from cl2cm_hf.data.schemas import DataFormatError
from cl2cm_hf.errors import CL2CMError

_READ_CHARS = 1 << 20  # characters of ids.json read at a time


def _parsed_ids(path: Path) -> Iterator[str]:
    """The ids of an id file, ``{"ids": [...]}`` or ``[...]``, one at a time; any other layout is read whole
    (`read_id_list`, which also names what is wrong with it)."""
    decoder = json.JSONDecoder()
    text, pos, eof = "", 0, False
    with open(path, encoding="utf-8", newline="") as handle:

        def more() -> None:
            nonlocal text, pos, eof
            try:
                read = handle.read(_READ_CHARS)
            except UnicodeDecodeError as err:
                raise DataFormatError(f"{path}: not UTF-8 ({err.reason} at byte {err.start} of a block)") from None
            text, pos, eof = text[pos:] + read, 0, not read

        def next_char() -> str:
            nonlocal pos
            while True:
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
                if pos < len(text) or eof:
                    return text[pos : pos + 1]
                more()

        def value():
            nonlocal pos
            next_char()
            while True:
                try:
                    found, end = decoder.raw_decode(text, pos)
                    if end < len(text) or eof:  # a number cut at the block's end would parse short
                        pos = end
                        return found
                except json.JSONDecodeError as err:
                    if eof:
                        raise DataFormatError(f"{path}: not valid JSON ({err.msg})") from None
                more()

        def expect(token: str) -> bool:
            nonlocal pos
            if next_char() != token:
                return False
            pos += 1
            return True

        if expect("{"):
            if next_char() != '"' or value() != "ids" or not expect(":"):
                yield from read_id_list(path)
                return
        if not expect("["):
            yield from read_id_list(path)
            return
        row = 0
        if expect("]"):
            return
        while True:
            visual_id = value()
            if visual_id is not None and not (isinstance(visual_id, (str, int)) and not isinstance(visual_id, bool)):
                raise DataFormatError(f"{path}: id at row {row} is {visual_id!r}; expected a string")
            yield "" if visual_id is None else str(visual_id)
            row += 1
            if expect("]"):
                return
            if not expect(","):
                raise DataFormatError(f"{path}: not valid JSON (expected ',' or ']' after id at row {row - 1})")


def _checked(folder: str | os.PathLike) -> Path:
    """The store's tensor file, after checking that both its files are there."""
    folder = Path(folder)
    for needed in (folder / FEATURES_FILE, folder / IDS_FILE):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: missing; a feature store folder holds {FEATURES_FILE} and {IDS_FILE}")
    return folder / FEATURES_FILE


def saved_id_blocks(folder: str | os.PathLike, block: int) -> Iterator[list[str]]:
    """The ids of the store saved in `folder`, `block` at a time, in row order. After the last block the
    count is checked against the feature rows and the ids against the digest saved with the features
    (`DataFormatError` naming the file, as `VisualFeatureStore.load` does)."""
    tensors = _checked(folder)
    folder = tensors.parent
    rows = len(_mmap_safetensors(tensors, "features"))
    with safe_open(tensors, framework="np") as handle:
        saved_digest = (handle.metadata() or {}).get("ids_sha256")
    digest, count, ids = hashlib.sha256(b"["), 0, []
    for visual_id in _parsed_ids(folder / IDS_FILE):
        digest.update(((", " if count else "") + json.dumps(visual_id, ensure_ascii=False)).encode("utf-8"))
        count += 1
        ids.append(visual_id)
        if len(ids) == block:
            yield ids
            ids = []
    if ids:
        yield ids
    digest.update(b"]")
    if count != rows:
        raise CL2CMError(f"feature store {folder}: {count} ids but {rows} feature rows; expected one row per id")
    if saved_digest is not None and saved_digest != digest.hexdigest():
        raise DataFormatError(f"{folder / IDS_FILE}: these ids are not the ones {FEATURES_FILE} was saved with "
                              "(an interrupted save, or a file edited by hand)")


def saved_row_bytes(folder: str | os.PathLike) -> int:
    """Bytes of one row (all its frames) of the store saved in `folder`."""
    features = _mmap_safetensors(_checked(folder), "features")
    return int(features.itemsize * np.prod(features.shape[1:]))


def saved_rows(folder: str | os.PathLike, rows: Sequence[int], ids: Sequence[str], name: str) -> VisualFeatureStore:
    """The in-memory store of rows `rows` (ascending) of the store saved in `folder`, under the ids `ids`
    (checked at once: NaN/Inf, empty or repeated ids raise naming `name` and the row in this block)."""
    folder, rows = Path(folder), np.asarray(rows, dtype=np.int64)
    features = _mmap_safetensors(folder / FEATURES_FILE, "features")
    values = features[rows]  # a copy: the memory map is closed when `features` goes
    del features
    lengths = None
    with safe_open(folder / FEATURES_FILE, framework="np") as handle:
        if "lengths" in handle.keys() and len(rows):
            lengths = handle.get_slice("lengths")[int(rows[0]) : int(rows[-1]) + 1][rows - rows[0]]
    return VisualFeatureStore(list(ids), values, lengths, name=name)
