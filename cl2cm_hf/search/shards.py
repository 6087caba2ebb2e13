"""Finished chunks as shards (the writer stage) and the cache a rerun reads back: embeddings and skip
reasons by cache key, from the previous index of the same namespace and the shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import atomic_write_bytes
from cl2cm_hf.search.index_files import METADATA_FILE, REPORT_FILE, SHARDS_DIR, BrokenIndexError, load_rows


def cache_namespace(revision: str, max_pixels: int) -> str:
    return hashlib.sha256(f"{revision}|max_pixels={max_pixels}".encode()).hexdigest()[:16]


def write_shard(folder: Path, namespace: str, entries: list[dict], embeddings: list[torch.Tensor]) -> None:
    from safetensors.torch import save

    name = hashlib.sha256("\n".join(e["key"] for e in entries).encode()).hexdigest()[:20]
    tensor = torch.stack(embeddings) if embeddings else torch.zeros(0, 0)
    data = save({"embeddings": tensor.contiguous()}, metadata={"entries": json.dumps(entries, ensure_ascii=False)})
    atomic_write_bytes(folder / f"{namespace}-{name}.safetensors", data)


class EmbeddingCache(Mapping):
    """Cached embeddings by key, as locations (the previous index's memory-mapped rows, or a shard and
    row); `rows` reads them back holding at most one shard's tensor at a time, so a build's memory
    does not grow with the number of items. `shard_loads` counts the shards read (for the tests)."""

    def __init__(self):
        self.where: dict[str, tuple[int, int]] = {}  # key -> (source, row)
        self.sources: list = []  # np arrays (the previous index) or shard paths
        self.shard_loads = 0
        self._held: tuple[int, np.ndarray] | None = None

    def add_source(self, source) -> int:
        self.sources.append(source)
        return len(self.sources) - 1

    def __getitem__(self, key: str) -> np.ndarray:
        return self.rows([key])[0]

    def __contains__(self, key) -> bool:
        return key in self.where  # a location is known: nothing is read

    def __iter__(self):
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def _array(self, source: int) -> np.ndarray:
        if not isinstance(self.sources[source], Path):
            return self.sources[source]
        if self._held is None or self._held[0] != source:
            from safetensors import safe_open

            self._held = None  # the previous shard is let go before the next one is read
            with safe_open(str(self.sources[source]), framework="pt") as handle:
                self._held = (source, handle.get_tensor("embeddings").numpy())
            self.shard_loads += 1
        return self._held[1]

    def rows(self, keys: list[str]) -> np.ndarray:
        """Float32 ``(len(keys), dim)`` embeddings of `keys`, in that order."""
        places = [self.where[key] for key in keys]
        out = None
        for i, (source, row) in enumerate(places):
            vector = self._array(source)[row]
            if out is None:
                out = np.empty((len(keys), vector.shape[0]), np.float32)
            out[i] = vector
        return out if out is not None else np.zeros((0, 0), np.float32)


def read_cache(out: Path, namespace: str) -> tuple[EmbeddingCache, dict[str, str], set[str]]:
    """key -> embedding (an `EmbeddingCache`: locations, read lazily) and key -> skip reason, from the
    previous index (same namespace) and the shards; and the keys the previous index held."""
    from safetensors import safe_open

    done, bad = EmbeddingCache(), {}
    if read_json(out / METADATA_FILE).get("namespace") == namespace:
        try:
            columns, embeddings = load_rows(out)
            source = done.add_source(embeddings)
            done.where.update((key, (source, row)) for row, key in enumerate(columns["key"]) if key)
            report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
            bad.update((entry["key"], entry["reason"]) for entry in report.get("skipped", []) if entry.get("key"))
        except (BrokenIndexError, OSError, ValueError, KeyError):
            done, bad = EmbeddingCache(), {}  # an unreadable old index is rebuilt, never trusted
    previous = set(done) | set(bad)
    for shard in sorted((out / SHARDS_DIR).glob(f"{namespace}-*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:  # the header only: tensors stay on disk
                entries = json.loads(handle.metadata()["entries"])
                rows = handle.get_slice("embeddings").get_shape()[0] if entries else 0
        except Exception:
            continue
        if sum(entry.get("reason") is None for entry in entries) != rows:
            continue  # a shard whose header and tensor disagree is re-encoded
        source, row = done.add_source(shard), 0
        for entry in entries:
            if entry.get("reason") is None:
                done.where[entry["key"]] = (source, row)
                row += 1
            else:
                bad[entry["key"]] = entry["reason"]
    return done, bad, previous


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


