"""`SearchIndex`: an index folder (`cl2cm_hf.search.index_files`) loaded for search, or several of them
searched as one (`cl2cm_hf.search.sharded`), answering text, image, video or "more like this" queries.

Torch and transformers are imported only when the checkpoint is loaded: an index with its query
encoder (`cl2cm_hf.search.query_encoder`) answers text and "more like this" queries without them."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval.search_numpy import topk_numpy
from cl2cm_hf.search.ann import AnnIndex, ShardRows
from cl2cm_hf.search.checks import check_int, printable
from cl2cm_hf.search.fingerprint import ModelMismatchError, load_checkpoint, model_files, model_mismatch
from cl2cm_hf.search.index_files import DATA_DIR, METADATA_FILE, BrokenIndexError, load_rows, read_metadata
from cl2cm_hf.search.query_encoder import QUERY_MAX_LENGTH, QueryEncoder
from cl2cm_hf.search.sharded import Chain, check_shards, fan_out, shard_folders, sharded_metadata

DEFAULT_TOP_K = 5


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


class SearchIndex:
    """An index loaded for search: `search` (texts, any language the model was trained on) and
    `search_image` ("more like this") return `SearchHit` lists, best first.

    Exact search is `cl2cm_hf.retrieval.topk_numpy` (bounded memory, ties to the lower row: the answer of
    `cl2cm_hf.retrieval.topk`); when the index has a faiss file and faiss is importable, that
    approximate index answers instead (``exact=True`` forces exact search). Loaded with its query
    encoder, the checkpoint is read on first use of `model` or `processor` (an image or video query)."""

    def __init__(self, folder, metadata: dict, columns: dict[str, list], embeddings: np.ndarray, model=None,
                 processor=None, faiss_index=None, device=None, max_length: int = QUERY_MAX_LENGTH, model_mismatch: str | None = None,
                 shards: list[SearchIndex] | None = None, query_encoder: QueryEncoder | None = None, load_model=None):
        self.folder = Path(folder)
        self.metadata = metadata
        self.ids, self.paths, self.captions = columns["id"], columns["path"], columns["caption"]
        self._rows: dict[str, int] | None = None  # id -> row, built on the first `search_item`
        self.embeddings = embeddings
        self._model, self._processor = model, processor
        self._load_model = load_model  # () -> (model, processor, mismatch): the checkpoint, read when first needed
        self._loading = threading.Lock()
        self.query_encoder = query_encoder
        self.faiss_index = faiss_index
        self.device = device
        self.max_length = check_int("max_length", max_length)
        self.model_mismatch = model_mismatch  # why the model is not the index's, when the caller allowed it
        self.shards = shards  # a sharded index: the loaded shards, searched by `fan_out` (embeddings is then None)

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, processor=None, *, device=None, use_faiss: bool = True,
             max_length: int = QUERY_MAX_LENGTH, allow_model_mismatch: bool = False) -> SearchIndex:
        """Load the index in `folder` with the model it was built with (from its metadata), or with
        `model` and `processor` when given: a model whose `model_fingerprint` differs from the one
        recorded at build time is refused (`ModelMismatchError`, naming both) unless
        `allow_model_mismatch`, and then `model_mismatch` says why it differs. A sharded index
        (`cl2cm_hf.search.sharded`) loads each shard so, with one model."""
        folder = Path(folder)
        parts = shard_folders(folder)
        if parts is not None:
            return cls._load_shards(folder, parts, model, processor, device=device, use_faiss=use_faiss,
                                    max_length=max_length, allow_model_mismatch=allow_model_mismatch)
        metadata = read_metadata(folder)
        columns, embeddings = load_rows(folder)
        if embeddings.shape != (metadata.get("count"), metadata.get("dim")):
            raise BrokenIndexError(
                f"{folder / DATA_DIR}: embeddings have shape {embeddings.shape}; {METADATA_FILE} says "
                f"({metadata.get('count')}, {metadata.get('dim')})"
            )
        encoder = _query_encoder(folder, metadata, device, max_length) if model is None else None
        load_model = mismatch = None
        if encoder is not None:  # the checkpoint's files are the build's: nothing to check until it is read
            def load_model():
                loaded_model, loaded_processor = load_checkpoint(metadata["model"], device)
                return loaded_model, loaded_processor, _checked(folder, metadata, loaded_model, str(metadata["model"]),
                                                                allow_model_mismatch)
        elif model is None:
            model, loaded = load_checkpoint(metadata["model"], device)
            processor = processor or loaded
            mismatch = _checked(folder, metadata, model, str(metadata["model"]), allow_model_mismatch)
        elif processor is None:
            raise CL2CMError("SearchIndex.load: pass processor= with model=")
        else:
            given = str(getattr(model, "name_or_path", "") or "the model passed as model=")
            mismatch = _checked(folder, metadata, model, given, allow_model_mismatch)
        faiss_index = None
        info = metadata.get("faiss")
        if use_faiss and info and (folder / info["file"]).is_file():
            try:
                import faiss
            except ImportError:
                faiss = None  # the index stays searchable exactly
            if faiss is not None and info.get("type") == "ivfpq":
                faiss_index = AnnIndex.load(folder, ShardRows([embeddings]))  # codes in RAM, rows re-ranked from the file
            elif faiss is not None:
                faiss_index = faiss.read_index(str(folder / info["file"]))
                if faiss_index.ntotal != len(embeddings):
                    raise BrokenIndexError(f"{folder / info['file']}: holds {faiss_index.ntotal} vectors; the index has {len(embeddings)}")
        return cls(folder, metadata, columns, embeddings, model, processor, faiss_index, device, max_length, mismatch,
                   query_encoder=encoder, load_model=load_model)

    @classmethod
    def _load_shards(cls, folder: Path, parts: list[Path], model, processor, **options) -> SearchIndex:
        """The sharded index `folder` over the index folders `parts`, loaded with one model."""
        metadatas = check_shards(parts)
        shards = []
        for part in parts:
            shards.append(cls.load(part, model, processor, **options))
            if model is None and shards[-1]._model is not None:  # a checkpoint read once serves every shard
                model, processor = shards[-1]._model, shards[-1]._processor
        columns = {name: Chain([getattr(shard, attribute) for shard in shards])
                   for name, attribute in (("id", "ids"), ("path", "paths"), ("caption", "captions"))}
        mismatch = next((shard.model_mismatch for shard in shards if shard.model_mismatch), None)
        first = shards[0]  # the shards' models are one (checked): the first one's encodes the queries
        return cls(folder, sharded_metadata(parts, metadatas), columns, None, model, processor, device=options["device"],
                   max_length=options["max_length"], model_mismatch=mismatch, shards=shards, query_encoder=first.query_encoder,
                   load_model=None if model is not None else lambda: (first.model, first.processor, first.model_mismatch))

    @classmethod
    def from_store(cls, store, model, processor, *, device=None, max_length: int = QUERY_MAX_LENGTH) -> SearchIndex:
        """An in-memory index over a visual store (a run's test gallery): its items encoded once with
        `model`, searched like a built index; nothing is written."""
        from cl2cm_hf.inference import encode_visual

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
        return f"SearchIndex({str(self.folder)!r}, {len(self)} items, dim {self.metadata.get('dim')}, faiss={kind.get('type')})"

    @property
    def model(self):
        """The checkpoint's model (read now when the index was loaded with its query encoder)."""
        self._read_checkpoint()
        return self._model

    @property
    def processor(self):
        self._read_checkpoint()
        return self._processor

    def _read_checkpoint(self) -> None:
        with self._loading:  # the page's request threads: one reads it, the others wait for it
            if self._model is None and self._load_model is not None:
                self._model, self._processor, mismatch = self._load_model()
                self._load_model = None
                self.model_mismatch = self.model_mismatch or mismatch

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Text embeddings ``(n, dim)``: the query encoder's, else through the checkpoint's processor (its
        text prefix) and `get_text_features`."""
        if self.query_encoder is not None:
            return self.query_encoder.encode(texts)
        import torch

        from cl2cm_hf.inference import encode_texts

        with torch.no_grad():
            return encode_texts(self.model.get_text_features, self.processor, texts, max_length=self.max_length,
                                device=self.device).numpy()

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

        from cl2cm_hf.search.decode import BadImage, open_image  # here: it imports the data layer, a text search does not

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
        from cl2cm_hf.inference import encode_visual

        query = encode_visual(self.model, [image], processor=self.processor, device=self.device)
        return self.search_embeddings(query, k, exact=exact)[0]

    def search_video(self, video, top_k: int | None = None, *, exact: bool = False, num_frames: int | None = None) -> list[SearchHit]:
        """The `top_k` items most like `video` (a file path, or ``(T, H, W, 3)`` uint8 frames), best
        first; the file is sampled as the index's videos were (its ``num_frames``)."""
        from cl2cm_hf.inference import embed_visual
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
        for part in self.shards or [self]:
            if part._rows is None:
                part._rows = {value: row for row, value in enumerate(part.ids)}
            if item_id in part._rows:
                embedding = np.asarray(part.embeddings[part._rows[item_id]], dtype=np.float32)[None]
                return self.search_embeddings(embedding, top_k, exact=exact)[0]
        raise UnknownQueryError(f"search_item: the index {self.folder} has no item {printable(str(item_id))!r}")

    def _top_k(self, top_k) -> int:
        """`top_k` checked against the index: at most its size (None: 5, or fewer when it holds fewer)."""
        if top_k is None:
            return min(DEFAULT_TOP_K, max(len(self), 1))
        k = check_int("top_k", top_k)
        if len(self) and k > len(self):
            raise CL2CMError(f"top_k={k} is more than the {len(self)} items of the index {self.folder}; ask for at most {len(self)}")
        return k

    def _check_known_words(self, query: str) -> None:
        if self.query_encoder is not None:
            unknown, unknown_token = self.query_encoder.unknown_token_id, self.query_encoder.unknown_token
            ids = self.query_encoder.word_ids(query) if unknown is not None else []
        else:
            tokenizer = getattr(self.processor, "tokenizer", None)
            unknown, unknown_token = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
            ids = [] if unknown is None else tokenizer(query, add_special_tokens=False, truncation=True,
                                                       max_length=self.max_length)["input_ids"]
        if ids and all(i == unknown for i in ids):  # (byte-level tokenizers have no unknown token)
            raise UnknownQueryError(f"search: no word of the query {printable(query)!r} is known to the model's tokenizer "
                                    f"(every token is {unknown_token}); try words of a language it was trained on")

    def search_embeddings(self, queries, top_k: int | None = None, *, exact: bool = False) -> list[list[SearchHit]]:
        """Hits of each row of `queries` ``(n, dim)``: exact `topk`, or the faiss index when present."""
        if not isinstance(exact, bool):
            raise CL2CMError(f"exact must be True or False, got {exact!r}")
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        k = self._top_k(top_k)
        if self.shards is not None:
            return fan_out(self.shards, queries, k, exact)
        queries = _as_numpy(queries)
        if queries.ndim != 2 or queries.shape[1] != self.metadata.get("dim"):
            raise CL2CMError(f"queries must be (n, {self.metadata.get('dim')}) embeddings of this index, got shape {queries.shape}")
        if isinstance(self.faiss_index, AnnIndex) and not exact:
            scores, rows = self.faiss_index.search(queries, k, rerank=(self.metadata.get("faiss") or {}).get("rerank", 0))
        elif self.faiss_index is not None and not exact:
            scores, rows = self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        else:
            scores, rows = topk_numpy(queries, self.embeddings, k)
        return [
            [SearchHit(self.ids[r], self.paths[r], float(s), self.captions[r], rank)
             for rank, (s, r) in enumerate(((s, r) for s, r in zip(srow.tolist(), rrow.tolist()) if r >= 0), start=1)]
            for srow, rrow in zip(scores, rows)
        ]


def _as_numpy(queries) -> np.ndarray:
    """Query embeddings as a numpy array (a torch tensor from any device, without importing torch)."""
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().float().numpy()
    return np.asarray(queries)


def _checked(folder: Path, metadata: dict, model, given: str, allow: bool) -> str | None:
    """Why `model` is not the index's (None when it is); a `ModelMismatchError` unless `allow`."""
    mismatch = model_mismatch(folder, metadata, model, given)
    if mismatch and not allow:
        raise ModelMismatchError(f"{mismatch}; rebuild the index with that model (cl2cm-index), or pass "
                                 "allow_model_mismatch=True (--allow-model-mismatch) to search with it anyway")
    return mismatch


def _query_encoder(folder: Path, metadata: dict, device, max_length: int) -> QueryEncoder | None:
    """The index's query encoder when it can stand in for the checkpoint: written by the build, the
    checkpoint's files unchanged since (names, sizes, mtimes), a CPU search, the same `max_length`, and
    onnxruntime installed."""
    info = metadata.get("query_encoder") or {}
    if not info.get("written") or (device is not None and str(device) != "cpu"):
        return None
    if not metadata.get("model_files") or metadata["model_files"] != model_files(metadata["model"]):
        return None
    try:
        encoder = QueryEncoder.load(folder / info["dir"])
    except ImportError:
        return None  # onnxruntime (or tokenizers) is not installed here: the checkpoint answers
    except Exception as err:  # missing or damaged files: onnxruntime's, tokenizers' and json's own errors
        raise BrokenIndexError(f"{folder / info['dir']}: the query encoder cannot be read ({printable(str(err))}); "
                               "rebuild the index (cl2cm-index)") from None
    return encoder if encoder.max_length == max_length else None
