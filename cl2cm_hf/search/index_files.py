"""The files of a search index folder and how they are read: the metadata, and the rows (`Column`s
read a row at a time from the memory-mapped Arrow table, the embeddings memory-mapped); and how the
build writes and re-reads the rows a block at a time (`RowsWriter`, `key_batches`).

Folder layout (written by `cl2cm_hf.search.index_build`; the folder is replaced as a whole, so a
reader sees the previous complete index or the new one, never a mix):

``metadata.json``
    model (path or hub id), model_name (what the page shows: the model card's name, else the
    folder's name), model_revision (``sha256:`` of the checkpoint's files), model_fingerprint (of the
    loaded model's config and tensors: `model_fingerprint`), model_files (`model_files`), dim, count, created (UTC), source,
    cache key kind, pictures (the folder given, or null), faiss (``{"type", "file", "recall@10", ...}`` or null),
    video (``{"num_frames", "max_seconds", "videos_only"}``: how video files were sampled; null for features).
``.cl2cm-index``
    the marker that makes the folder recognisable as an index (`cl2cm_hf.search.out_folder`).
``data/``
    a `datasets` dataset (``save_to_disk``): id, path (None for features without ``--pictures``), caption (None
    when unknown), key (what the incremental rebuild compares); read memory-mapped, a row at a time (`Column`).
``embeddings.npy``
    float32 ``(count, dim)``, L2-normalised, row i = row i of ``data/``; memory-mapped (copy-on-write) when loaded. (Indexes
    written before it hold an ``embedding`` column in ``data/`` instead; they still load.)
``report.json``
    the items that were skipped: ``{"skipped": [{"id", "file", "reason", "key"}]}``.
``faiss.index``
    when faiss was importable at build time.
``query_encoder/``
    the text tower as ONNX with its tokenizer (`cl2cm_hf.search.query_encoder`), unless the build was
    asked not to write it or could not (metadata ``query_encoder``: ``written`` and why not).
``shards/``
    only while a build is running or after one was killed: finished batches of embeddings.

A sharded index (several index folders searched as one) is described in `cl2cm_hf.search.sharded`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cl2cm_hf.atomic import recover_directory
from cl2cm_hf.errors import CL2CMError

METADATA_FILE = "metadata.json"
DATA_DIR = "data"
EMBEDDINGS_FILE = "embeddings.npy"
REPORT_FILE = "report.json"
FAISS_FILE = "faiss.index"
SHARDS_DIR = "shards"
INDEX_FORMAT = "cl2cm-search-index/1"
_DATA_FILE = "data-00000-of-00001.arrow"


class BrokenIndexError(CL2CMError):
    """An index folder that is missing, incomplete or unreadable; the message names the file."""


def read_metadata(folder: str | os.PathLike) -> dict:
    """``metadata.json`` of a complete index; BrokenIndexError naming what is wrong otherwise."""
    folder = Path(folder)
    recover_directory(folder)
    path = folder / METADATA_FILE
    if not folder.is_dir():
        raise BrokenIndexError(f"{folder}: no such index folder (build one with cl2cm-index MODEL --images DIR --out {folder})")
    if not path.is_file():
        hint = " (a build is in progress or was interrupted: rerun cl2cm-index to finish it)" if (folder / SHARDS_DIR).is_dir() else ""
        raise BrokenIndexError(f"{path}: missing; {folder} is not a complete search index{hint}")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BrokenIndexError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != INDEX_FORMAT:
        raise BrokenIndexError(f"{path}: format is {metadata.get('format') if isinstance(metadata, dict) else None!r}; expected {INDEX_FORMAT!r}")
    return metadata


_COLUMNS = ("id", "path", "caption", "key")


class RowsWriter:
    """Writes ``data/`` and ``embeddings.npy`` of `count` rows a block at a time, with plain file writes (no
    memory map: written pages are not the process's), ``data/`` as ``datasets.save_to_disk`` lays it out
    (one Arrow stream file written by `datasets.arrow_writer.ArrowWriter`, ``state.json``, ``dataset_info.json``)."""

    def __init__(self, folder: Path, count: int):
        from datasets import DatasetInfo, Features, Value
        from datasets.arrow_writer import ArrowWriter

        (folder / DATA_DIR).mkdir()
        self.folder, self.count, self.dim, self.written = folder, count, None, 0
        self.features = Features({name: Value("string") for name in _COLUMNS})
        self.info = DatasetInfo(features=self.features)
        self.columns = ArrowWriter(features=self.features, path=str(folder / DATA_DIR / _DATA_FILE), writer_batch_size=1 << 16)
        self.embeddings = open(folder / EMBEDDINGS_FILE, "wb")

    def write(self, rows: dict[str, list], embeddings: np.ndarray) -> None:
        """One block: the `_COLUMNS` of its rows and their embeddings ``(rows, dim)``."""
        if self.dim is None:
            self._header(embeddings.shape[1])
        self.columns.write_batch(rows)
        self.written += len(embeddings)
        self.embeddings.write(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())

    def _header(self, dim: int) -> None:
        self.dim = dim
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (self.count, dim)}
        np.lib.format.write_array_header_1_0(self.embeddings, header)

    def close(self) -> int:
        """Finish both files; returns the dim (0 when there are no rows)."""
        if self.dim is None:
            self._header(0)
        self.embeddings.close()
        if self.written != self.count:
            raise RuntimeError(f"{self.folder}: {self.written} rows written, {self.count} announced")
        self.columns.finalize()
        self.columns.close()
        state = {"_data_files": [{"filename": _DATA_FILE}], "_fingerprint": os.urandom(8).hex(), "_format_columns": None,
                 "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
        (self.folder / DATA_DIR / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        self.info.write_to_directory(str(self.folder / DATA_DIR))
        return self.dim


def key_batches(folder: str | os.PathLike):
    """(first row, the ``key`` column's values) of each record batch of the index's ``data/``, read with
    plain reads, one batch at a time (not memory-mapped: the pages read do not stay in the process)."""
    import pyarrow as pa

    data = Path(folder) / DATA_DIR
    start = 0
    for name in json.loads((data / "state.json").read_text(encoding="utf-8"))["_data_files"]:
        with pa.OSFile(str(data / name["filename"])) as handle:
            for batch in pa.ipc.open_stream(handle):
                yield start, batch.column("key").to_pylist()
                start += batch.num_rows


class Column(Sequence):
    """One string column of the index, read from its memory-mapped Arrow table a row at a time: a
    loaded index holds no Python list of its ids, paths or captions."""

    def __init__(self, array=None, count: int = 0):
        self.array, self.count = array, len(array) if array is not None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self.count))]
        if self.array is None:
            if not -self.count <= row < self.count:
                raise IndexError(row)
            return None
        return self.array[row].as_py()

    def __iter__(self):
        if self.array is None:
            yield from (None for _ in range(self.count))
            return
        for chunk in self.array.chunks:
            yield from chunk.to_pylist()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None


def load_rows(folder: str | os.PathLike) -> tuple[dict[str, Sequence], np.ndarray]:
    """The index's columns (id, path, caption, key as `Column`s) and its embeddings ``(n, d)`` float32:
    ``embeddings.npy`` memory-mapped (read-only), or the ``embedding`` column of an index written before it."""
    import pyarrow as pa

    folder = Path(folder)
    data = folder / DATA_DIR
    try:  # the files `datasets.save_to_disk` wrote, memory-mapped by pyarrow (importing datasets costs seconds)
        files = json.loads((data / "state.json").read_text(encoding="utf-8"))["_data_files"]
        table = pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(data / f["filename"]))).read_all() for f in files])
    except Exception as err:
        raise BrokenIndexError(f"{data}: not a readable datasets folder ({type(err).__name__}: {err})") from None
    count = table.num_rows
    column_names = table.column_names
    stored = folder / EMBEDDINGS_FILE
    if stored.is_file():
        try:
            # copy-on-write: pages are shared with the file and the page cache, the file is never written, and
            # torch can wrap the array without a copy (a read-only one it would copy chunk by chunk per query)
            embeddings = np.load(stored, mmap_mode="c")
        except (OSError, ValueError) as err:
            raise BrokenIndexError(f"{stored}: not a readable .npy file ({err})") from None
        if embeddings.dtype != np.float32 or embeddings.ndim != 2:
            raise BrokenIndexError(f"{stored}: holds {embeddings.dtype} {embeddings.shape}; expected float32 (count, dim)")
    elif "embedding" in column_names:
        chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in table.column("embedding").chunks]
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        dim = flat.size // count if count else 0
        embeddings = np.ascontiguousarray(flat, dtype=np.float32).reshape(count, dim)
    else:
        raise BrokenIndexError(f"{folder}: no {EMBEDDINGS_FILE} (and no embedding column in {data})")
    if "id" not in column_names:
        raise BrokenIndexError(f"{data}: columns ['id'] missing (found {column_names})")
    columns = {name: Column(table.column(name)) if name in column_names else Column(count=count)
               for name in ("id", "path", "caption", "key")}
    return columns, embeddings
