"""Finished chunks as shards (the writer stage) and the cache a rerun reads back: embeddings and skip
reasons by cache key, from the previous index of the same namespace and the shards."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import atomic_write_bytes
from cl2cm_hf.search.index_files import METADATA_FILE, REPORT_FILE, SHARDS_DIR, BrokenIndexError, key_batches, load_rows
from cl2cm_hf.search.item_table import ItemTable


def cache_namespace(revision: str, max_pixels: int) -> str:
    return hashlib.sha256(f"{revision}|max_pixels={max_pixels}".encode()).hexdigest()[:16]


def write_shard(folder: Path, namespace: str, entries: list[dict], embeddings: list[torch.Tensor]) -> None:
    from safetensors.torch import save

    name = hashlib.sha256("\n".join(e["key"] for e in entries).encode()).hexdigest()[:20]
    tensor = torch.stack(embeddings) if embeddings else torch.zeros(0, 0)
    data = save({"embeddings": tensor.contiguous()}, metadata={"entries": json.dumps(entries, ensure_ascii=False)})
    atomic_write_bytes(folder / f"{namespace}-{name}.safetensors", data)


class EmbeddingCache:
    """Cached embeddings read back by place (source, row) from an `ItemTable`'s sources (the previous
    index's ``embeddings.npy``, or shards), holding at most one shard's tensor at a time; the previous
    index's rows go through a memory map closed after each call (its pages do not stay in the process),
    so a build's memory does not grow with the number of items. `shard_loads` counts the shards read."""

    def __init__(self, table: ItemTable):
        self.table = table
        self.shard_loads = 0
        self._held: tuple[int, np.ndarray] | None = None

    def _array(self, source: int) -> np.ndarray:
        if self._held is None or self._held[0] != source:
            from safetensors import safe_open

            self._held = None  # the previous shard is let go before the next one is read
            path = Path(self.table.source(source))
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    self._held = (source, handle.get_tensor("embeddings").numpy())
                self.shard_loads += 1
            else:
                self._held = (source, load_rows(path)[1])  # the previous index folder
        return self._held[1]

    def rows(self, places: list[tuple[int, int]]) -> np.ndarray:
        """Float32 ``(len(places), dim)`` embeddings at `places` ((source, row) each), in that order."""
        out, start = None, 0
        for source, run in itertools.groupby(places, key=lambda place: place[0]):  # runs of one source
            rows = np.array([row for _, row in run])
            block = self._array(source)[rows]
            if out is None:
                out = np.empty((len(places), block.shape[1]), np.float32)
            out[start : start + len(rows)] = block
            start += len(rows)
        if self._held is not None and isinstance(self._held[1], np.memmap):
            self._held = None  # close the previous index's memory map
        return out if out is not None else np.zeros((0, 0), np.float32)


def read_cache(out: Path, namespace: str, table: ItemTable, fresh: bool = False) -> None:
    """Fill `table` with the places of cached embeddings and the skip reasons by key: from the previous
    index (same namespace; its keys are the table's `previous`) and the shards. With `fresh`, only the
    shards not read before (those this build wrote) are added, marked fresh."""
    from safetensors import safe_open

    if not fresh and read_json(out / METADATA_FILE).get("namespace") == namespace:
        try:
            source = table.add_source(str(out))
            for start, keys in key_batches(out):
                table.add_done((key, source, start + i) for i, key in enumerate(keys) if key)
            report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
            table.add_bad((entry["key"], entry["reason"]) for entry in report.get("skipped", []) if entry.get("key"))
        except (BrokenIndexError, OSError, ValueError, KeyError):
            table.forget_cached()  # an unreadable old index is rebuilt, never trusted
        table.mark_previous()
    for shard in sorted((out / SHARDS_DIR).glob(f"{namespace}-*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:  # the header only: tensors stay on disk
                entries = json.loads(handle.metadata()["entries"])
                rows = handle.get_slice("embeddings").get_shape()[0] if entries else 0
        except Exception:
            continue
        if sum(entry.get("reason") is None for entry in entries) != rows:
            continue  # a shard whose header and tensor disagree is re-encoded
        source = table.add_source(str(shard))
        if source is None:
            continue  # read before
        good = [entry["key"] for entry in entries if entry.get("reason") is None]
        table.add_done(((key, source, row) for row, key in enumerate(good)), fresh)
        table.add_bad(((entry["key"], entry["reason"]) for entry in entries if entry.get("reason") is not None), fresh)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


