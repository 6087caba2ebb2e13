"""A search index on disk and `SearchIndex`, which loads it and answers text or image queries.

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
``shards/``
    only while a build is running or after one was killed: finished batches of embeddings.

Every checkpoint is loaded by `load_checkpoint`, the one place that decides what may run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import recover_directory
from cl2cm_hf.data.schemas import is_blank
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.inference import embed_visual, encode_texts, encode_visual, load_model_and_processor
from cl2cm_hf.retrieval import faiss_search, topk
from cl2cm_hf.search.ann import AnnIndex, ShardRows
from cl2cm_hf.search.checks import check_int, printable
from cl2cm_hf.search.decode import BadImage, open_image

METADATA_FILE = "metadata.json"
DATA_DIR = "data"
EMBEDDINGS_FILE = "embeddings.npy"
REPORT_FILE = "report.json"
FAISS_FILE = "faiss.index"
SHARDS_DIR = "shards"
INDEX_FORMAT = "cl2cm-search-index/1"
DEFAULT_TOP_K = 5
# Files of a checkpoint folder that do not change what it computes (cards, plots, copied galleries).
_NOT_MODEL = (".md", ".png", ".jpg", ".jpeg", ".svg")


class BrokenIndexError(CL2CMError):
    """An index folder that is missing, incomplete or unreadable; the message names the file."""


class ModelMismatchError(CL2CMError):
    """The model given to search an index is not the one the index was built with."""


class UnknownQueryError(CL2CMError):
    """A text query of which the tokenizer knows no word: every token is its unknown token."""


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


def model_files(name: str | os.PathLike) -> list | None:
    """(name, size, mtime_ns) of the files `model_revision` hashes, for a local folder (else None): recorded
    at build time, so that a search whose checkpoint files are unchanged skips `model_fingerprint`."""
    folder = Path(name)
    if not folder.is_dir():
        return None
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() not in _NOT_MODEL]


def model_fingerprint(model) -> dict:
    """What a model computes with, wherever it was loaded from: sha256 of its config (less the
    fields that name where it came from) and of every tensor of its state dict (name, dtype, shape
    and bytes). Equal fingerprints mean the same embeddings; the dtype counts (bf16 is another model)."""
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype")}
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        weights.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        weights.update(flat.view(torch.uint8).numpy())
    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return {"config": f"sha256:{config_digest}", "weights": f"sha256:{weights.hexdigest()}"}


def model_display_name(name: str | os.PathLike) -> str:
    """A name a person can read for checkpoint `name`, never a local path: the model card's
    ``model_name`` (or its model-index name), else the folder's name; a hub id as it is."""
    folder = Path(name)
    if not folder.is_dir():
        return str(name)
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(folder / "README.md").data
        index = data.get("model-index") or [{}]
        card_name = data.get("model_name") or (index[0].get("name") if isinstance(index[0], dict) else None)
    except Exception:
        card_name = None
    return str(card_name) if isinstance(card_name, str) and card_name.strip() else folder.resolve().name


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


class SearchIndex:
    """An index loaded for search: `search` (texts, any language the model was trained on) and
    `search_image` ("more like this") return `SearchHit` lists, best first.

    Exact search is `cl2cm_hf.retrieval.topk` (bounded memory, ties to the lower row); when the
    index has a faiss file and faiss is importable, that approximate index answers instead
    (``exact=True`` forces exact search)."""

    def __init__(self, folder, metadata: dict, columns: dict[str, list], embeddings: np.ndarray, model=None,
                 processor=None, faiss_index=None, device=None, max_length: int = 64, model_mismatch: str | None = None):
        self.folder = Path(folder)
        self.metadata = metadata
        self.ids, self.paths, self.captions = columns["id"], columns["path"], columns["caption"]
        self._rows: dict[str, int] | None = None  # id -> row, built on the first `search_item`
        self.embeddings = embeddings
        self.model, self.processor = model, processor
        self.faiss_index = faiss_index
        self.device = device
        self.max_length = check_int("max_length", max_length)
        self.model_mismatch = model_mismatch  # why the model is not the index's, when the caller allowed it

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, processor=None, *, device=None, use_faiss: bool = True,
             max_length: int = 64, allow_model_mismatch: bool = False) -> SearchIndex:
        """Load the index in `folder` with the model it was built with (from its metadata), or with
        `model` and `processor` when given: a model whose `model_fingerprint` differs from the one
        recorded at build time is refused (`ModelMismatchError`, naming both) unless
        `allow_model_mismatch`, and then `model_mismatch` says why it differs."""
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
            given = str(metadata["model"])
        elif processor is None:
            raise CL2CMError("SearchIndex.load: pass processor= with model=")
        else:
            given = str(getattr(model, "name_or_path", "") or "the model passed as model=")
        mismatch = _model_mismatch(folder, metadata, model, given)
        if mismatch and not allow_model_mismatch:
            raise ModelMismatchError(f"{mismatch}; rebuild the index with that model (cl2cm-index), or pass "
                                     "allow_model_mismatch=True (--allow-model-mismatch) to search with it anyway")
        faiss_index = None
        info = metadata.get("faiss")
        if use_faiss and info and (folder / info["file"]).is_file():
            try:
                import faiss
            except ImportError:
                faiss = None  # the index stays searchable exactly
            if faiss is not None and info.get("type") == "ivfpq":
                faiss_index = AnnIndex.load(folder, ShardRows([embeddings]))  # memory-mapped
            elif faiss is not None:
                faiss_index = faiss.read_index(str(folder / info["file"]))
                if faiss_index.ntotal != len(embeddings):
                    raise BrokenIndexError(f"{folder / info['file']}: holds {faiss_index.ntotal} vectors; the index has {len(embeddings)}")
        return cls(folder, metadata, columns, embeddings, model, processor, faiss_index, device, max_length, mismatch)

    @classmethod
    def from_store(cls, store, model, processor, *, device=None, max_length: int = 64) -> SearchIndex:
        """An in-memory index over a visual store (a run's test gallery): its items encoded once with
        `model`, searched like a built index; nothing is written."""
        ids = list(store.ids)
        embeddings = encode_visual(model, store, ids, processor=processor, device=device).numpy()
        folder = getattr(store, "folder", None) or "."
        metadata = {"count": len(ids), "dim": embeddings.shape[1], "model": getattr(model, "name_or_path", "")}
        columns = {"id": ids, "path": [None] * len(ids), "caption": [None] * len(ids)}
        return cls(folder, metadata, columns, embeddings, model, processor, device=device, max_length=max_length)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        kind = self.metadata.get("faiss", {}) or {}
        return f"SearchIndex({str(self.folder)!r}, {len(self)} items, dim {self.embeddings.shape[1]}, faiss={kind.get('type')})"

    @torch.no_grad()
    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings through the checkpoint's processor (its text prefix) and `get_text_features`."""
        return encode_texts(self.model.get_text_features, self.processor, texts, max_length=self.max_length, device=self.device)

    def search(self, query: str, top_k: int | None = None, *, exact: bool = False) -> list[SearchHit]:
        """The `top_k` items best matching the text `query`, best first (`top_k` None: 5, or every
        item of a smaller index). A blank query is a ValueError, one of which the tokenizer knows no
        word an `UnknownQueryError`."""
        if not isinstance(query, str):
            raise CL2CMError(f"search: query must be a text (str), got {type(query).__name__}")
        if is_blank(query):
            raise CL2CMError(f"search: the query {printable(query)!r} is empty; type a caption to search for")
        k = self._top_k(top_k)
        self._check_known_words(query)
        return self.search_embeddings(self.encode_queries([query]), k, exact=exact)[0]

    def search_image(self, image, top_k: int | None = None, *, exact: bool = False) -> list[SearchHit]:
        """The `top_k` items most like `image` (a PIL image, an ``(H, W, 3)`` uint8 array or a file
        path), best first; a file that is not an image is a `BadImage` with the reason."""
        from PIL import Image



        if getattr(self.processor, "image_processor", None) is None:
            raise CL2CMError(f"{self.folder}: the model {self.metadata.get('model_name') or self.metadata.get('model')} reads "
                             "precomputed features, not pixels; search with its features through search_embeddings")
        k = self._top_k(top_k)
        if isinstance(image, (str, os.PathLike)):
            try:
                image = open_image(image)
            except BadImage as err:
                raise BadImage(f"{printable(str(image))}: {err}") from None
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise BadImage(f"search_image: an image array must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            image = Image.fromarray(image)
        elif isinstance(image, Image.Image):
            if 0 in image.size:
                raise BadImage(f"search_image: the image has no pixels ({image.size[0]}x{image.size[1]})")
            image = image.convert("RGB")
        else:
            raise CL2CMError(f"search_image: image must be a PIL image, an (H, W, 3) array or a file path, got {type(image).__name__}")
        query = encode_visual(self.model, [image], processor=self.processor, device=self.device)
        return self.search_embeddings(query, k, exact=exact)[0]

    def search_video(self, video, top_k: int | None = None, *, exact: bool = False, num_frames: int | None = None) -> list[SearchHit]:
        """The `top_k` items most like `video` (a file path, or ``(T, H, W, 3)`` uint8 frames), best
        first; the file is sampled as the index's videos were (its ``num_frames``)."""
        from cl2cm_hf.search.decode_video import VideoSettings, open_video, video_inputs

        if getattr(self.processor, "image_processor", None) is None:
            raise CL2CMError(f"{self.folder}: the model reads precomputed features, not pixels; search like an "
                             "indexed item with search_item(id)")
        k = self._top_k(top_k)
        if isinstance(video, (str, os.PathLike)):
            frames = num_frames or (self.metadata.get("video") or {}).get("num_frames") or VideoSettings().num_frames
            video = open_video(video, VideoSettings(num_frames=frames))
        elif not (isinstance(video, np.ndarray) and video.ndim == 4 and video.shape[-1] == 3 and video.dtype == np.uint8 and video.size):
            raise CL2CMError(f"search_video: video must be a file path or (T, H, W, 3) uint8 frames, got {type(video).__name__}")
        inputs = {key: value.to(self.device) for key, value in video_inputs(self.processor, [video]).items()}
        return self.search_embeddings(embed_visual(self.model, **inputs).float().cpu(), k, exact=exact)[0]

    def search_item(self, item_id: str, top_k: int | None = None, *, exact: bool = False) -> list[SearchHit]:
        """"More like this" for an indexed item, from its stored embedding (any index: pictures,
        videos or features); `UnknownQueryError` when the index has no item `item_id`."""
        if self._rows is None:
            self._rows = {value: row for row, value in enumerate(self.ids)}
        if item_id not in self._rows:
            raise UnknownQueryError(f"search_item: the index {self.folder} has no item {printable(str(item_id))!r}")
        return self.search_embeddings(torch.from_numpy(np.asarray(self.embeddings[self._rows[item_id]])[None]), top_k,
                                      exact=exact)[0]

    def _top_k(self, top_k) -> int:
        """`top_k` checked against the index: at most its size (None: 5, or fewer when it holds fewer)."""
        if top_k is None:
            return min(DEFAULT_TOP_K, max(len(self), 1))
        k = check_int("top_k", top_k)
        if len(self) and k > len(self):
            raise CL2CMError(f"top_k={k} is more than the {len(self)} items of the index {self.folder}; ask for at most {len(self)}")
        return k

    def _check_known_words(self, query: str) -> None:
        tokenizer = getattr(self.processor, "tokenizer", None)
        unknown = getattr(tokenizer, "unk_token_id", None)
        if unknown is None:
            return  # byte-level tokenizers have no unknown token
        ids = tokenizer(query, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        if ids and all(i == unknown for i in ids):
            raise UnknownQueryError(f"search: no word of the query {printable(query)!r} is known to the model's tokenizer "
                                    f"(every token is {tokenizer.unk_token}); try words of a language it was trained on")

    def search_embeddings(self, queries, top_k: int | None = None, *, exact: bool = False) -> list[list[SearchHit]]:
        """Hits of each row of `queries` ``(n, dim)``: exact `topk`, or the faiss index when present."""
        if not isinstance(exact, bool):
            raise CL2CMError(f"exact must be True or False, got {exact!r}")
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        k = self._top_k(top_k)
        if isinstance(self.faiss_index, AnnIndex) and not exact:
            queries = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
            scores, rows = self.faiss_index.search(queries, k, rerank=(self.metadata.get("faiss") or {}).get("rerank", 0))
        elif self.faiss_index is not None and not exact:
            scores, rows = faiss_search(self.faiss_index, queries, k)
        else:
            gallery = torch.from_numpy(self.embeddings) if isinstance(self.embeddings, np.ndarray) else self.embeddings
            scores, rows = topk(queries, gallery, k)
        return [
            [SearchHit(self.ids[r], self.paths[r], float(s), self.captions[r], rank)
             for rank, (s, r) in enumerate(((s, r) for s, r in zip(srow.tolist(), rrow.tolist()) if r >= 0), start=1)]
            for srow, rrow in zip(scores, rows)
        ]


def _model_mismatch(folder: Path, metadata: dict, model, given: str) -> str | None:
    """Why `model` (named `given`) is not the model the index in `folder` was built with, or None."""
    built = f"{metadata.get('model')}"
    dim = getattr(model.config, "projection_dim", None)
    if dim is not None and metadata.get("dim") and dim != metadata["dim"]:
        raise ModelMismatchError(f"{folder}: built with {built} (dim {metadata['dim']}); {given} embeds in dim {dim}: "
                                 "it cannot search this index")
    recorded = metadata.get("model_fingerprint")
    if given == built and metadata.get("model_files") and metadata["model_files"] == model_files(built):
        return None  # the very files the index was built with (same names, sizes, mtimes): no need to hash the weights
    if not isinstance(recorded, dict):
        revision = model_revision(given, model) if given == built else None
        if revision == metadata.get("model_revision"):
            return None
        return (f"{folder}: built with {built} at {metadata.get('model_revision')} (the index records no fingerprint "
                f"of its model); {given} cannot be checked against it")
    found = model_fingerprint(model)
    differs = [part for part in ("weights", "config") if found.get(part) != recorded.get(part)]
    if not differs:
        return None
    def short(fingerprint: dict) -> str:
        return ", ".join(f"{part} {str(fingerprint.get(part))[:19]}" for part in differs)

    now = "that checkpoint has changed since" if given == built else f"{given} has other {' and '.join(differs)}"
    return f"{folder}: built with {built} ({short(recorded)}), but {now} ({short(found)})"
