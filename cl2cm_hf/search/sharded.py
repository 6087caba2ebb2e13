"""Several index folders searched as one: an index past one machine's memory, or built by several jobs.

A sharded index is a folder holding only ``metadata.json``::

    {"format": "cl2cm-sharded-index/1", "shards": ["../part0", "../part1", "/mnt/b/part2"]}

each shard an index folder written by ``cl2cm-index`` (a path relative to the sharded folder, or
absolute). `SearchIndex.load` of that folder loads every shard with one model and answers each query
by asking every shard for its top k (in threads) and keeping the k best: the exact top k of the
union, since the shards score with the same model (same fingerprint and dim, checked here; ids are
assumed distinct across shards). Ties go to the earlier shard, then the lower row, as in one index
holding the shards' rows in order. ``cl2cm-shards OUT SHARD...`` (`write_sharded`) checks the shards
and writes the file; a deployment across machines would put each shard behind its own process and
merge the same way (`merge_hits`)."""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cl2cm_hf.atomic import atomic_write_text
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.index_files import METADATA_FILE, BrokenIndexError, read_metadata

SHARDED_FORMAT = "cl2cm-sharded-index/1"


class ShardMismatchError(CL2CMError):
    """Shards that cannot be searched as one index (another model or dim); the message names the shard."""


def shard_folders(folder: str | os.PathLike) -> list[Path] | None:
    """The shard folders listed by the sharded index `folder`, or None when `folder` is not one."""
    path = Path(folder) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a sharded index: `read_metadata` says what is wrong with it as an index
    if not isinstance(metadata, dict) or metadata.get("format") != SHARDED_FORMAT:
        return None
    shards = metadata.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) and s for s in shards):
        raise BrokenIndexError(f"{path}: 'shards' must be a non-empty list of index folders, got {shards!r}")
    return [Path(folder) / shard for shard in shards]  # an absolute shard path stays absolute


def check_shards(folders: Sequence[Path]) -> list[dict]:
    """The metadata of each shard, when all were built with the same model (fingerprint, else revision)
    and dim; `ShardMismatchError` naming the first shard that differs from the first otherwise."""
    metadatas = [read_metadata(folder) for folder in folders]  # BrokenIndexError naming a broken shard
    first = metadatas[0]

    def model_of(metadata: dict):
        return metadata.get("model_fingerprint") or metadata.get("model_revision")

    for folder, metadata in zip(folders[1:], metadatas[1:]):
        for what, value, expected in (("dim", metadata.get("dim"), first.get("dim")),
                                      ("model", model_of(metadata), model_of(first))):
            if value != expected or value is None:
                raise ShardMismatchError(
                    f"shard {folder}: {what} {value} ({metadata.get('model')}) differs from shard {folders[0]}'s {expected} "
                    f"({first.get('model')}); the scores of shards are compared, so every shard must be built with one model")
    return metadatas


def sharded_metadata(folders: Sequence[Path], metadatas: Sequence[dict]) -> dict:
    """What a loaded sharded index shows (the page's model line, ``cl2cm-search``'s header): the shared
    model fields of the first shard, the total count, the newest shard's build time, the shard folders."""
    shared = ("model", "model_name", "model_revision", "model_fingerprint", "model_files", "dim", "video")
    metadata = {key: metadatas[0].get(key) for key in shared}
    kinds = {(m.get("faiss") or {}).get("type") for m in metadatas}
    faiss = {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else None
    created = max((str(m["created"]) for m in metadatas if m.get("created")), default=None)  # ISO UTC: sorts by time
    return {"format": SHARDED_FORMAT, **metadata, "count": sum(m["count"] for m in metadatas), "created": created, "faiss": faiss,
            "shards": [str(folder) for folder in folders]}


class Chain(Sequence):
    """The shards' columns (ids, paths, captions) read as one, in shard order, without a copy."""

    def __init__(self, parts: Sequence[Sequence]):
        self.parts = list(parts)
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        row %= len(self)
        part = bisect.bisect_right(self.starts, row) - 1
        return self.parts[part][row - self.starts[part]]

    def __iter__(self):
        for part in self.parts:
            yield from part

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None


def merge_hits(per_shard: Sequence[Sequence], k: int) -> list:
    """The `k` best of the shards' hit lists for one query (each best first), ranked anew; ties go to the
    earlier shard, then its own order."""
    ranked = sorted(((-hit.score, shard, place), hit) for shard, hits in enumerate(per_shard) for place, hit in enumerate(hits))
    return [dataclasses.replace(hit, rank=rank) for rank, (_, hit) in enumerate(ranked[:k], start=1)]


def fan_out(shards: Sequence, queries, k: int, exact: bool) -> list[list]:
    """Each query's exact top `k` over `shards` (loaded `SearchIndex`es): every shard searched in its own
    thread (numpy, torch and faiss release the GIL while scoring), the results merged."""
    def one(shard):
        if len(shard) == 0:
            return [[] for _ in range(len(queries))]
        return shard.search_embeddings(queries, min(k, len(shard)), exact=exact)

    with ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="cl2cm-shard") as pool:
        results = list(pool.map(one, shards))
    return [merge_hits([result[q] for result in results], k) for q in range(len(queries))]


def write_sharded(out: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> dict:
    """Write the sharded index `out` over the index folders `shards` (checked with `check_shards`) and
    return its metadata. `out` must be missing, empty or a sharded index (which is replaced); shard
    paths are stored relative to `out`, so the folders can move together."""
    out = Path(out)
    if not shards:
        raise CL2CMError("give at least one shard (an index folder written by cl2cm-index)")
    if out.exists():
        entries = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else None
        if entries is None or (entries and shard_folders(out) is None) or set(entries) - {METADATA_FILE}:
            raise CL2CMError(f"{out}: not empty and not a sharded index; choose a new folder for the sharded index")
    folders = [Path(shard).resolve() for shard in shards]
    if len(set(folders)) != len(folders):
        raise CL2CMError(f"a shard is listed twice: {[str(s) for s in shards]}")
    metadatas = check_shards(folders)
    out.mkdir(parents=True, exist_ok=True)
    listed = [os.path.relpath(folder, out.resolve()) for folder in folders]
    metadata = {"format": SHARDED_FORMAT, "shards": listed, "count": sum(m["count"] for m in metadatas),
                "dim": metadatas[0].get("dim"), "model": metadatas[0].get("model")}
    atomic_write_text(out / METADATA_FILE, json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
    return metadata
