"""Precomputed visual features looked up by visual id: one vector per image ``(N, D)`` or a frame
sequence per video ``(N, T, D)`` with per-item ``lengths``.

Arrays may be memory-mapped (``.npy`` via ``np.load(mmap_mode="r")``, safetensors via the file's
header offsets), so a store larger than RAM costs only the rows a batch reads. Non-finite values
are rejected when an in-memory store is built and, for memory-mapped stores, the first time a row
is read (``validate()`` scans everything up front).

On disk (``save``/``load``): a folder with ``features.safetensors`` (tensors ``features`` and, for
video, ``lengths``) and ``ids.json``; each file is written to a temporary name and then renamed.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from .textfiles import read_ids

FEATURES_FILE = "features.safetensors"
IDS_FILE = "ids.json"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class MissingVisualIdError(KeyError):
    """A visual id asked for is not in the store (a KeyError whose message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteFeatureError(ValueError):
    """A feature row holds NaN or Inf."""


def index_ids(ids: Iterable[str], name: str) -> tuple[list[str], dict[str, int]]:
    """The ids as strings and their row index; duplicates and empty ids raise naming both rows."""
    ids = [str(i) for i in ids]
    index: dict[str, int] = {}
    for row, visual_id in enumerate(ids):
        if not visual_id.strip():
            raise ValueError(f"{name}: empty visual id at row {row}")
        if visual_id in index:
            raise ValueError(f"{name}: duplicate visual id {visual_id!r} at rows {index[visual_id]} and {row}")
        index[visual_id] = row
    return ids, index


def rows_of(index: dict[str, int], visual_ids: Sequence[str], name: str) -> np.ndarray:
    """Row numbers of `visual_ids`; an unknown id raises MissingVisualIdError naming it and the store."""
    rows = np.empty(len(visual_ids), dtype=np.int64)
    for i, visual_id in enumerate(visual_ids):
        row = index.get(visual_id)
        if row is None:
            raise MissingVisualIdError(f"visual_id {visual_id!r} is not in {name} ({len(index)} items)")
        rows[i] = row
    return rows


def read_id_list(ids: Sequence[str] | str | os.PathLike) -> list[str]:
    """Ids given as a sequence, a ``.json`` list (or ``{"ids": [...]}``) or a text file with one id per line."""
    if not isinstance(ids, (str, os.PathLike)):
        return [str(i) for i in ids]
    path = Path(ids)
    if path.suffix == ".json":
        loaded = json.loads(path.read_text(encoding="utf-8"))
        return [str(i) for i in (loaded["ids"] if isinstance(loaded, dict) else loaded)]
    return read_ids(path)


def _mmap_safetensors(path: Path, key: str) -> np.ndarray:
    """Memory-map tensor `key` of a safetensors file (read-only), using the header's offsets."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    if key not in header:
        raise KeyError(f"{path}: no tensor {key!r} (found {sorted(k for k in header if k != '__metadata__')})")
    info = header[key]
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: tensor {key!r} has dtype {info['dtype']}; expected one of {sorted(_SAFETENSORS_DTYPES)}")
    begin, _ = info["data_offsets"]
    dtype, offset = _SAFETENSORS_DTYPES[info["dtype"]], 8 + header_len + begin
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(info["shape"]))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class VisualFeatureStore:
    """Feature rows addressed by visual id.

    `lookup(ids)` returns ``(features, mask)``: ``FloatTensor (B, D)`` and ``None`` for images,
    ``FloatTensor (B, T, D)`` and ``LongTensor (B, T)`` for videos, with ``T`` the longest item of
    the batch (padding frames are zeros, mask 0).
    """

    output_key = "visual_features"  # batch key the collators use for the features

    def __init__(self, ids: Sequence[str], array: np.ndarray, lengths: Sequence[int] | None = None, name: str | None = None):
        self.name = name or f"in-memory feature store ({len(ids)} items)"
        self._ids, self._index = index_ids(ids, self.name)
        if array.ndim not in (2, 3):
            raise ValueError(f"{self.name}: features must be (N, D) or (N, T, D), got shape {array.shape}")
        if array.shape[0] != len(self._ids):
            raise ValueError(f"{self.name}: {len(self._ids)} ids but {array.shape[0]} feature rows; expected one row per id")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{self.name}: features have dtype {array.dtype}; expected floating point")
        self._array = array
        self._lengths = self._check_lengths(lengths)
        self._lazy = isinstance(array, np.memmap) or (array.base is not None and isinstance(array.base, np.memmap))
        self._checked = np.zeros(len(self._ids), dtype=bool)
        if not self._lazy:
            self.validate()

    def _check_lengths(self, lengths) -> np.ndarray | None:
        if self._array.ndim == 2:
            if lengths is not None:
                raise ValueError(f"{self.name}: lengths are only for frame features (N, T, D)")
            return None
        frames = self._array.shape[1]
        lengths = np.full(len(self._ids), frames, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (len(self._ids),):
            raise ValueError(f"{self.name}: lengths has shape {lengths.shape}; expected ({len(self._ids)},)")
        bad = np.flatnonzero((lengths < 1) | (lengths > frames))
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"{self.name}: visual_id {self._ids[row]!r} (row {row}) has length {lengths[row]}; expected 1..{frames}"
            )
        return lengths

    # --- construction and persistence -------------------------------------------------------
    @classmethod
    def from_arrays(cls, ids: Sequence[str], array, lengths=None, name: str | None = None) -> "VisualFeatureStore":
        """A store over an in-memory array (numpy or torch); checked for NaN/Inf at once."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        return cls(ids, np.asarray(array), lengths, name)

    @classmethod
    def from_npy(
        cls, npy_path: str | os.PathLike, ids: Sequence[str] | str | os.PathLike, lengths=None, mmap: bool = True
    ) -> "VisualFeatureStore":
        """A store over a ``.npy`` array (memory-mapped by default); `ids` a list or an id file."""
        array = np.load(npy_path, mmap_mode="r" if mmap else None)
        return cls(read_id_list(ids), array, lengths, name=f"feature store {npy_path}")

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "VisualFeatureStore":
        """A store saved by `save` (the folder, or its ``features.safetensors``)."""
        path = Path(path)
        folder = path.parent if path.suffix == ".safetensors" else path
        tensors = folder / FEATURES_FILE
        for needed in (tensors, folder / IDS_FILE):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed}: missing; a feature store folder holds {FEATURES_FILE} and {IDS_FILE}")
        with safe_open(tensors, framework="np") as handle:
            lengths = handle.get_tensor("lengths") if "lengths" in handle.keys() else None
            array = None if mmap else handle.get_tensor("features")
        if mmap:
            array = _mmap_safetensors(tensors, "features")
        return cls(read_id_list(folder / IDS_FILE), array, lengths, name=f"feature store {folder}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the store to folder `path` (created if needed); returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"features": np.ascontiguousarray(self._array)}
        if self._lengths is not None:
            tensors["lengths"] = self._lengths
        _atomic_write(folder / FEATURES_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "np"}))
        _atomic_write(folder / IDS_FILE, lambda tmp: tmp.write_text(json.dumps({"ids": self._ids}), encoding="utf-8"))
        return folder

    # --- checks -------------------------------------------------------------------------------
    def _check_rows(self, rows: np.ndarray, values: np.ndarray) -> None:
        finite = np.isfinite(values.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            row = int(rows[np.flatnonzero(~finite)[0]])
            raise NonFiniteFeatureError(f"{self.name}: features of visual_id {self._ids[row]!r} (row {row}) contain NaN or Inf")
        self._checked[rows] = True

    def _valid_values(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """`values` (rows of the array) as float32 with padding frames set to zero."""
        values = np.array(values, dtype=np.float32)
        if self._lengths is not None:
            values[np.arange(values.shape[1])[None, :] >= self._lengths[rows][:, None]] = 0.0
        return values

    def validate(self, chunk_bytes: int = 1 << 26) -> "VisualFeatureStore":
        """Scan every row for NaN/Inf (in chunks, so memory-mapped stores stay cheap)."""
        row_bytes = 4 * int(np.prod(self._array.shape[1:]))
        step = max(1, chunk_bytes // max(row_bytes, 1))
        for start in range(0, len(self._ids), step):
            rows = np.arange(start, min(start + step, len(self._ids)))
            self._check_rows(rows, self._valid_values(rows, self._array[start : start + len(rows)]))
        return self

    # --- lookup -------------------------------------------------------------------------------
    def lookup(self, visual_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of `visual_ids` as float32 and the frame mask (None for images)."""
        rows = rows_of(self._index, visual_ids, self.name)
        if self._lengths is None:
            values = self._valid_values(rows, self._array[rows])
            mask = None
        else:
            frames = int(self._lengths[rows].max()) if len(rows) else 0
            values = self._valid_values(rows, self._array[rows, :frames])
            mask = torch.from_numpy((np.arange(frames)[None, :] < self._lengths[rows][:, None]).astype(np.int64))
        unchecked = ~self._checked[rows]
        if unchecked.any():
            self._check_rows(rows[unchecked], values[unchecked])
        return torch.from_numpy(values), mask

    # --- properties -----------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def feature_dim(self) -> int:
        return int(self._array.shape[-1])

    @property
    def is_video(self) -> bool:
        return self._lengths is not None

    @property
    def max_frames(self) -> int:
        return int(self._array.shape[1]) if self.is_video else 1

    @property
    def lengths(self) -> np.ndarray | None:
        return None if self._lengths is None else self._lengths.copy()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, visual_id: object) -> bool:
        return visual_id in self._index

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self._array.shape)
        return f"VisualFeatureStore({self.name!r}, {shape}, video={self.is_video})"
