"""Finished chunks as shards (the writer stage) and the cache a rerun reads back: embeddings and skip
reasons by cache key, from the previous index of the same namespace and the shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import atomic_write_bytes
from cl2cm_hf.search.index import METADATA_FILE, REPORT_FILE, SHARDS_DIR, BrokenIndexError, load_rows


def cache_namespace(revision: str, max_pixels: int) -> str:
    return hashlib.sha256(f"{revision}|max_pixels={max_pixels}".encode()).hexdigest()[:16]


def write_shard(folder: Path, namespace: str, entries: list[dict], embeddings: list[torch.Tensor]) -> None:
    from safetensors.torch import save

    name = hashlib.sha256("\n".join(e["key"] for e in entries).encode()).hexdigest()[:20]
    tensor = torch.stack(embeddings) if embeddings else torch.zeros(0, 0)
    data = save({"embeddings": tensor.contiguous()}, metadata={"entries": json.dumps(entries, ensure_ascii=False)})
    atomic_write_bytes(folder / f"{namespace}-{name}.safetensors", data)


def read_cache(out: Path, namespace: str) -> tuple[dict[str, np.ndarray], dict[str, str], set[str]]:
    """key -> embedding and key -> skip reason, from the previous index (same namespace) and the
    shards; and the keys the previous index held."""
    from safetensors import safe_open

    done, bad = {}, {}
    if read_json(out / METADATA_FILE).get("namespace") == namespace:
        try:
            columns, embeddings = load_rows(out)
            done.update((key, row) for key, row in zip(columns["key"], embeddings) if key)
            report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
            bad.update((entry["key"], entry["reason"]) for entry in report.get("skipped", []) if entry.get("key"))
        except (BrokenIndexError, OSError, ValueError, KeyError):
            done, bad = {}, {}  # an unreadable old index is rebuilt, never trusted
    previous = set(done) | set(bad)
    for shard in sorted((out / SHARDS_DIR).glob(f"{namespace}-*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                entries = json.loads(handle.metadata()["entries"])
                tensor = handle.get_tensor("embeddings").numpy()
        except Exception:
            continue
        row = 0
        for entry in entries:
            if entry.get("reason") is None:
                done[entry["key"]] = tensor[row]
                row += 1
            else:
                bad[entry["key"]] = entry["reason"]
    return done, bad, previous


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


