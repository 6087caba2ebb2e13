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

import hashlib
import json
import os
import struct
from collections.abc import Container, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.data.badrows import RowPolicy, SkippedRows
from cl2cm_hf.data.schemas import DataFormatError
from cl2cm_hf.data.textfiles import decode_utf8, read_bytes, read_ids
from cl2cm_hf.errors import CL2CMError

FEATURES_FILE = "features.safetensors"
IDS_FILE = "ids.json"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class MissingVisualIdError(KeyError):
    """A visual id asked for is not in the store (a KeyError whose message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteFeatureError(CL2CMError):
    """A feature row holds NaN or Inf."""


def index_ids(ids: Iterable[str], name: str, exclude: Container[int] = ()) -> tuple[list[str], dict[str, int]]:
    """The ids as strings and their row index (rows in `exclude` left out); duplicates and empty ids
    raise naming both rows."""
    ids = ["" if i is None else str(i) for i in ids]
    index: dict[str, int] = {}
    for row, visual_id in enumerate(ids):
        if row in exclude:
            continue
        if is_blank(visual_id):
            raise CL2CMError(f"{name}: empty visual id at row {row}")
        if visual_id in index:
            raise CL2CMError(f"{name}: duplicate visual id {visual_id!r} at rows {index[visual_id]} and {row}")
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
    if path.suffix != ".json":
        return read_ids(path)
    try:
        loaded = json.loads(decode_utf8(read_bytes(path), path))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    loaded = loaded.get("ids") if isinstance(loaded, dict) else loaded
    if not isinstance(loaded, list):
        raise DataFormatError(f"{path}: expected a list of ids or {{\"ids\": [...]}}")
    for row, visual_id in enumerate(loaded):
        if visual_id is not None and not (isinstance(visual_id, (str, int)) and not isinstance(visual_id, bool)):
            raise DataFormatError(f"{path}: id at row {row} is {visual_id!r}; expected a string")
    return ["" if i is None else str(i) for i in loaded]  # an empty id is reported as a bad row


def _mmap_safetensors(path: Path, key: str) -> np.ndarray:
    """Memory-map tensor `key` of a safetensors file (read-only), using the header's offsets."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if header_len > size - 8:
            raise DataFormatError(f"{path}: not a valid safetensors file (header longer than the file); truncated or corrupted")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataFormatError(f"{path}: not a valid safetensors file (header: {err}); truncated or corrupted") from None
    if key not in header:
        raise DataFormatError(f"{path}: no tensor {key!r} (found {sorted(k for k in header if k != '__metadata__')})")
    info = header[key]
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise CL2CMError(f"{path}: tensor {key!r} has dtype {info['dtype']}; expected one of {sorted(_SAFETENSORS_DTYPES)}")
    begin, end = info["data_offsets"]
    dtype, offset, shape = _SAFETENSORS_DTYPES[info["dtype"]], 8 + header_len + begin, tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize or offset + end - begin > size:
        raise DataFormatError(f"{path}: tensor {key!r} does not fit the file (truncated or corrupted)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode("utf-8")).hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def as_lengths(lengths, name: str) -> np.ndarray:
    """Frame counts as int64. Counts written as floats must be whole numbers (2.0, not 2.5: a cast
    would silently drop frames); booleans and other kinds are refused."""
    values = np.asarray(lengths)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            bad = values[~(np.isfinite(values) & (values == np.round(values)))].reshape(-1)[0]
            raise CL2CMError(f"{name}: lengths must be whole numbers of frames, got {bad!r}")
    elif values.dtype.kind not in "iu":
        raise CL2CMError(f"{name}: lengths must be whole numbers of frames, got dtype {values.dtype}")
    return values.astype(np.int64)


def _bad_store_rows(ids: Sequence[str], array: np.ndarray, lengths, chunk_bytes: int = 1 << 26) -> dict[int, str]:
    """Row -> what is wrong, for every bad row of a store: empty or duplicate id (the later rows),
    a length outside 1..T (video), NaN/Inf in the valid frames. Reads the array in chunks."""
    bad: dict[int, str] = {}
    first: dict[str, int] = {}
    for row, visual_id in enumerate(ids):
        if is_blank(str(visual_id)):
            bad[row] = "empty visual id"
        elif visual_id in first:
            bad[row] = f"duplicate visual id (first at row {first[visual_id]})"
        else:
            first[visual_id] = row
    if array.ndim == 3:
        frames = array.shape[1]
        lengths = np.full(len(ids), frames) if lengths is None else as_lengths(lengths, "lengths").reshape(-1)
        if lengths.shape != (len(ids),):
            raise CL2CMError(f"lengths has shape {lengths.shape}; expected ({len(ids)},)")
        for row in np.flatnonzero((lengths < 1) | (lengths > frames)):
            bad.setdefault(int(row), f"length {lengths[row]}; expected 1..{frames}")
    step = max(1, chunk_bytes // max(4 * int(np.prod(array.shape[1:])), 1))
    for start in range(0, len(ids), step):
        values = np.asarray(array[start : start + step], dtype=np.float32)
        if array.ndim == 3:
            valid = np.arange(values.shape[1])[None, :] < np.clip(lengths[start : start + step], 0, None)[:, None]
            finite = (np.isfinite(values).all(axis=2) | ~valid).all(axis=1)
        else:
            finite = np.isfinite(values).all(axis=1)
        for offset in np.flatnonzero(~finite):
            bad.setdefault(start + int(offset), "features contain NaN or Inf")
    return bad


class VisualFeatureStore:
    """Feature rows addressed by visual id.

    `lookup(ids)` returns ``(features, mask)``: ``FloatTensor (B, D)`` and ``None`` for images,
    ``FloatTensor (B, T, D)`` and ``LongTensor (B, T)`` for videos, with ``T`` the longest item of
    the batch (padding frames are zeros, mask 0).
    """

    output_key = "visual_features"  # batch key the collators use for the features

    def __init__(
        self,
        ids: Sequence[str],
        array: np.ndarray,
        lengths: Sequence[int] | None = None,
        name: str | None = None,
        exclude: Iterable[int] = (),
    ):
        self.name = name or f"in-memory feature store ({len(ids)} items)"
        self._excluded = frozenset(int(row) for row in exclude)  # rows left out (on_bad_row: skip)
        self._ids, self._index = index_ids(ids, self.name, self._excluded)
        self._rows = np.array(sorted(self._index.values()), dtype=np.int64)  # the rows in use
        if array.ndim not in (2, 3) or 0 in array.shape[1:]:
            raise CL2CMError(
                f"{self.name}: features must be (N, D) or (N, T, D) with D and T at least 1, got shape {array.shape}"
            )
        if array.shape[0] != len(self._ids):
            raise CL2CMError(f"{self.name}: {len(self._ids)} ids but {array.shape[0]} feature rows; expected one row per id")
        if not np.issubdtype(array.dtype, np.floating):
            raise CL2CMError(f"{self.name}: features have dtype {array.dtype}; expected floating point")
        self._array = array
        self._lengths = self._check_lengths(lengths)
        self._lazy = isinstance(array, np.memmap) or (array.base is not None and isinstance(array.base, np.memmap))
        self._checked = np.zeros(len(self._ids), dtype=bool)
        if not self._lazy:
            self.validate()

    def _check_lengths(self, lengths) -> np.ndarray | None:
        if self._array.ndim == 2:
            if lengths is not None:
                raise CL2CMError(f"{self.name}: lengths are only for frame features (N, T, D)")
            return None
        frames = self._array.shape[1]
        lengths = np.full(len(self._ids), frames, dtype=np.int64) if lengths is None else as_lengths(lengths, self.name)
        if lengths.shape != (len(self._ids),):
            raise CL2CMError(f"{self.name}: lengths has shape {lengths.shape}; expected ({len(self._ids)},)")
        out_of_range = (lengths < 1) | (lengths > frames)
        out_of_range[list(self._excluded)] = False
        bad = np.flatnonzero(out_of_range)
        if bad.size:
            row = int(bad[0])
            raise CL2CMError(
                f"{self.name}: visual_id {self._ids[row]!r} (row {row}) has length {lengths[row]}; expected 1..{frames}"
            )
        return lengths

    # --- construction and persistence -------------------------------------------------------
    @classmethod
    def from_arrays(cls, ids: Sequence[str], array, lengths=None, name: str | None = None) -> VisualFeatureStore:
        """A store over an in-memory array (numpy or torch); checked for NaN/Inf at once."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        return cls(ids, np.asarray(array), lengths, name)

    @classmethod
    def from_npy(
        cls,
        npy_path: str | os.PathLike,
        ids: Sequence[str] | str | os.PathLike,
        lengths=None,
        mmap: bool = True,
        on_bad_row: str | None = None,
        skipped: SkippedRows | None = None,
    ) -> VisualFeatureStore:
        """A store over a ``.npy`` array (memory-mapped by default); `ids` a list or an id file.
        `on_bad_row`/`skipped`: see `load`."""
        npy_path = Path(npy_path)
        if not npy_path.is_file():
            raise FileNotFoundError(f"{npy_path}: no such file")
        try:
            array = np.load(npy_path, mmap_mode="r" if mmap else None)  # allow_pickle stays False
        except (ValueError, OSError, EOFError) as err:
            raise DataFormatError(f"{npy_path}: not a readable .npy array ({err}); truncated or corrupted?") from None
        if not isinstance(array, np.ndarray):
            raise DataFormatError(f"{npy_path}: holds {type(array).__name__}, not one array")
        return cls._with_policy(read_id_list(ids), array, lengths, f"feature store {npy_path}", on_bad_row, skipped)

    @classmethod
    def load(
        cls, path: str | os.PathLike, mmap: bool = True, on_bad_row: str | None = None, skipped: SkippedRows | None = None
    ) -> VisualFeatureStore:
        """A store saved by `save` (the folder, or its ``features.safetensors``).

        A truncated or corrupted file raises `DataFormatError` naming it. With `on_bad_row` set, every
        row is checked now (else memory-mapped rows are checked when first read): ``"error"`` raises at
        the first bad row (empty or duplicate id, NaN/Inf, impossible length), ``"skip"`` leaves such
        rows out, logs them and adds them to `skipped` (a duplicate id keeps its first row)."""
        path = Path(path)
        folder = path.parent if path.suffix == ".safetensors" else path
        tensors = folder / FEATURES_FILE
        for needed in (tensors, folder / IDS_FILE):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed}: missing; a feature store folder holds {FEATURES_FILE} and {IDS_FILE}")
        try:
            with safe_open(tensors, framework="np") as handle:
                if "features" not in handle.keys():
                    raise DataFormatError(f"{tensors}: no tensor 'features' (found {sorted(handle.keys())})")
                lengths = handle.get_tensor("lengths") if "lengths" in handle.keys() else None
                array = None if mmap else handle.get_tensor("features")
                digest = (handle.metadata() or {}).get("ids_sha256")
        except DataFormatError:
            raise
        except Exception as err:
            raise DataFormatError(f"{tensors}: not a valid safetensors file ({err}); truncated or corrupted") from None
        if mmap:
            array = _mmap_safetensors(tensors, "features")
        ids = read_id_list(folder / IDS_FILE)
        if digest is not None and digest != _ids_digest(ids):
            raise DataFormatError(
                f"{folder / IDS_FILE}: these ids are not the ones {tensors.name} was saved with "
                "(an interrupted save, or a file edited by hand)"
            )
        return cls._with_policy(ids, array, lengths, f"feature store {folder}", on_bad_row, skipped)

    @classmethod
    def _with_policy(cls, ids, array, lengths, name, on_bad_row, skipped) -> VisualFeatureStore:
        if on_bad_row is None:
            return cls(ids, array, lengths, name=name)
        policy = RowPolicy(on_bad_row, skipped)
        if not policy.skip:
            return cls(ids, array, lengths, name=name).validate()
        if getattr(array, "ndim", 0) not in (2, 3) or len(ids) != array.shape[0]:
            return cls(ids, array, lengths, name=name)  # raises: a whole-store fault
        bad = _bad_store_rows(ids, array, lengths)
        for row, reason in sorted(bad.items()):
            policy.bad(name, f"row {row}", reason, visual_id=ids[row])
        store = cls(ids, array, lengths, name=name, exclude=bad)
        policy.warn(name, len(store))
        return store

    def save(self, path: str | os.PathLike) -> Path:
        """Write the store to folder `path` (created if needed); returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        rows = self._rows if self._excluded else slice(None)
        tensors = {"features": np.ascontiguousarray(self._array[rows])}
        if self._lengths is not None:
            tensors["lengths"] = np.ascontiguousarray(self._lengths[rows])
        ids = self.ids
        # The ids' digest in the tensors' metadata: a save cut between the two files (new features,
        # old ids) is caught at load instead of pairing rows with the wrong ids.
        metadata = {"format": "np", "ids_sha256": _ids_digest(ids)}
        _atomic_write(folder / FEATURES_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        _atomic_write(folder / IDS_FILE, lambda tmp: tmp.write_text(json.dumps({"ids": ids}), encoding="utf-8"))
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

    def validate(self, chunk_bytes: int = 1 << 26) -> VisualFeatureStore:
        """Scan every row for NaN/Inf (in chunks, so memory-mapped stores stay cheap)."""
        row_bytes = 4 * int(np.prod(self._array.shape[1:]))
        step = max(1, chunk_bytes // max(row_bytes, 1))
        for start in range(0, len(self._ids), step):
            rows = np.arange(start, min(start + step, len(self._ids)))
            values = self._array[start : start + len(rows)]
            if self._excluded:
                keep = ~np.isin(rows, list(self._excluded))
                rows, values = rows[keep], values[keep]
            self._check_rows(rows, self._valid_values(rows, values))
        return self

    # --- lookup -------------------------------------------------------------------------------
    def lookup(self, visual_ids: Sequence[str], image_processor=None, video_processor=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of `visual_ids` as float32 and the frame mask (None for images). `image_processor`
        and `video_processor` are not used (features need no decoding); they keep the lookup the same
        as `ImagePathStore`'s."""
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
        return [self._ids[row] for row in self._rows]

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
        return len(self._index)

    def __contains__(self, visual_id: object) -> bool:
        return visual_id in self._index

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self._array.shape)
        return f"VisualFeatureStore({self.name!r}, {shape}, video={self.is_video})"
