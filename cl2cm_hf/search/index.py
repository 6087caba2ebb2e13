"""A search index on disk and `SearchIndex`, which loads it and answers text or image queries.

Folder layout (written by `cl2cm_hf.search.index_build`; the folder is replaced as a whole, so a
reader sees the previous complete index or the new one, never a mix):

``metadata.json``
    model (path or hub id), model_revision (``sha256:`` of the checkpoint's files), dim, count,
    created (UTC), source, cache key kind, pictures (the folder given, or null), faiss (``{"type", "file", "recall@10", ...}`` or null).
``data/``
    a `datasets` dataset (``save_to_disk``): id, path (None for features without ``--pictures``), embedding (float32,
    L2-normalised), caption (None when unknown), key (what the incremental rebuild compares).
``report.json``
    the items that were skipped: ``{"skipped": [{"id", "file", "reason", "key"}]}``.
``faiss.index``
    when faiss was importable at build time.
``shards/``
    only while a build is running or after one was killed: finished batches of embeddings.

Every checkpoint is loaded by `load_checkpoint`, the one place that decides what may run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import recover_directory
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.inference import encode_texts, encode_visual
from cl2cm_hf.retrieval import faiss_search, topk

METADATA_FILE = "metadata.json"
DATA_DIR = "data"
REPORT_FILE = "report.json"
FAISS_FILE = "faiss.index"
SHARDS_DIR = "shards"
INDEX_FORMAT = "cl2cm-search-index/1"
# Files of a checkpoint folder that do not change what it computes (cards, plots, copied galleries).
_NOT_MODEL = (".md", ".png", ".jpg", ".jpeg", ".svg")


class BrokenIndexError(ValueError):
    """An index folder that is missing, incomplete or unreadable; the message names the file."""


@dataclass(frozen=True)
class SearchHit:
    """One result: the item's id, its file (None for precomputed features), the inner-product
    score of the L2-normalised embeddings (cosine), and its caption when the index has one."""

    id: str
    path: str | None
    score: float
    caption: str | None = None
    rank: int = 1

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score, "caption": self.caption}


def load_checkpoint(name: str | os.PathLike, device: torch.device | str | None = None):
    """The cross-modal checkpoint `name` (folder or hub id) in eval mode and its processor.

    Every path through which the search package loads a model goes through here, so what a
    checkpoint is allowed to run is decided in this one function."""
    model, processor = load_model_and_processor(str(name))
    return (model.to(device) if device is not None else model), processor


def model_revision(name: str | os.PathLike, model=None) -> str:
    """What identifies the weights an index was built with: for a local folder the sha256 of its
    top-level files (weights, config, processor, code; not cards or plots), else the hub commit."""
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in _NOT_MODEL):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            digest.update(b"\0")
        return f"sha256:{digest.hexdigest()}"
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"commit:{commit}" if commit else f"name:{name}"


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


def load_rows(folder: str | os.PathLike) -> tuple[dict[str, list], np.ndarray]:
    """The index's columns (id, path, caption, key as lists) and its embeddings ``(n, d)`` float32."""
    from datasets import load_from_disk

    data = Path(folder) / DATA_DIR
    try:
        dataset = load_from_disk(str(data))
    except Exception as err:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ArrowInvalid...
        raise BrokenIndexError(f"{data}: not a readable datasets folder ({type(err).__name__}: {err})") from None
    missing = {"id", "embedding"} - set(dataset.column_names)
    if missing:
        raise BrokenIndexError(f"{data}: columns {sorted(missing)} missing (found {dataset.column_names})")
    table = dataset.data.table
    chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in table.column("embedding").chunks]
    count = len(dataset)
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    dim = flat.size // count if count else 0
    embeddings = np.ascontiguousarray(flat, dtype=np.float32).reshape(count, dim)
    columns = {name: table.column(name).to_pylist() if name in dataset.column_names else [None] * count
               for name in ("id", "path", "caption", "key")}
    return columns, embeddings


class SearchIndex:
    """An index loaded for search: `search` (texts, any language the model was trained on) and
    `search_image` ("more like this") return `SearchHit` lists, best first.

    Exact search is `cl2cm_hf.retrieval.topk` (bounded memory, ties to the lower row); when the
    index has a faiss file and faiss is importable, that approximate index answers instead
    (``exact=True`` forces exact search)."""

    def __init__(self, folder, metadata: dict, columns: dict[str, list], embeddings: np.ndarray, model=None,
                 processor=None, faiss_index=None, device=None, max_length: int = 64):
        self.folder = Path(folder)
        self.metadata = metadata
        self.ids = list(columns["id"])
        self.paths = list(columns["path"])
        self.captions = list(columns["caption"])
        self.embeddings = embeddings
        self.model, self.processor = model, processor
        self.faiss_index = faiss_index
        self.device = device
        self.max_length = max_length

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, processor=None, *, device=None, use_faiss: bool = True,
             max_length: int = 64) -> "SearchIndex":
        """Load the index in `folder`; the model and processor come from the metadata's model
        (checked against the stored revision) unless given."""
        folder = Path(folder)
        metadata = read_metadata(folder)
        columns, embeddings = load_rows(folder)
        if embeddings.shape != (metadata.get("count"), metadata.get("dim")):
            raise BrokenIndexError(
                f"{folder / DATA_DIR}: embeddings have shape {embeddings.shape}; {METADATA_FILE} says "
                f"({metadata.get('count')}, {metadata.get('dim')})"
            )
        if model is None:
            model, loaded = load_checkpoint(metadata["model"], device)
            processor = processor or loaded
            revision = model_revision(metadata["model"], model)
            if revision != metadata.get("model_revision"):
                raise BrokenIndexError(
                    f"{folder}: built with {metadata['model']} at {metadata.get('model_revision')}, but that checkpoint "
                    f"is now {revision}; rebuild the index (cl2cm-index) or pass model= explicitly"
                )
        elif processor is None:
            raise ValueError("SearchIndex.load: pass processor= with model=")
        faiss_index = None
        info = metadata.get("faiss")
        if use_faiss and info and (folder / info["file"]).is_file():
            try:
                import faiss
            except ImportError:
                faiss = None  # the index stays searchable exactly
            if faiss is not None:
                faiss_index = faiss.read_index(str(folder / info["file"]))
                if faiss_index.ntotal != len(embeddings):
                    raise BrokenIndexError(f"{folder / info['file']}: holds {faiss_index.ntotal} vectors; the index has {len(embeddings)}")
        return cls(folder, metadata, columns, embeddings, model, processor, faiss_index, device, max_length)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        kind = self.metadata.get("faiss", {}) or {}
        return f"SearchIndex({str(self.folder)!r}, {len(self)} items, dim {self.embeddings.shape[1]}, faiss={kind.get('type')})"

    @torch.no_grad()
    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings through the checkpoint's processor (its text prefix) and `get_text_features`."""
        return encode_texts(self.model.get_text_features, self.processor, texts, max_length=self.max_length, device=self.device)

    def search(self, query: str, top_k: int = 5, *, exact: bool = False) -> list["SearchHit"]:
        """The `top_k` items best matching the text `query`, best first."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"search: expected a non-empty text query, got {query!r}")
        return self.search_embeddings(self.encode_queries([query]), top_k, exact=exact)[0]

    def search_image(self, image, top_k: int = 5, *, exact: bool = False) -> list["SearchHit"]:
        """The `top_k` items most like `image` (a PIL image, an ``(H, W, C)`` array or a file path)."""
        if getattr(self.processor, "image_processor", None) is None:
            raise ValueError(f"{self.folder}: the model {self.metadata.get('model')} reads precomputed features, not "
                             "pixels; search with its features through search_embeddings")
        if isinstance(image, (str, os.PathLike)):
            from .index_build import open_image

            image = open_image(image)
        query = encode_visual(self.model, [image], processor=self.processor, device=self.device)
        return self.search_embeddings(query, top_k, exact=exact)[0]

    def search_embeddings(self, queries, top_k: int = 5, *, exact: bool = False) -> list[list["SearchHit"]]:
        """Hits of each row of `queries` ``(n, dim)``: exact `topk`, or the faiss index when present."""
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        k = max(1, min(int(top_k), len(self)))
        if self.faiss_index is not None and not exact:
            scores, rows = faiss_search(self.faiss_index, queries, k)
        else:
            scores, rows = topk(queries, self.embeddings, k)
        return [
            [SearchHit(self.ids[r], self.paths[r], float(s), self.captions[r], rank)
             for rank, (s, r) in enumerate(((s, r) for s, r in zip(srow.tolist(), rrow.tolist()) if r >= 0), start=1)]
            for srow, rrow in zip(scores, rows)
        ]
