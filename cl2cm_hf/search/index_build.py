"""Build a search index over a user's images, videos or precomputed features (``cl2cm-index``).

    cl2cm-index MODEL --images DIR|LIST|DATASET --out INDEX
    cl2cm-index MODEL --features STORE --out INDEX          # feature store or image/frame store
    torchrun --nproc_per_node 2 -m cl2cm_hf.search.index_build MODEL --images DIR --out INDEX

Inputs: a folder (every non-hidden file below it, id = the path relative to it), a text file
listing image paths (one a line, relative to the list's folder; id = the line), or a `datasets`
folder saved with ``save_to_disk`` (an ``image`` column of `datasets.Image` or a ``path`` column;
optional ``id`` and ``caption``). ``--features`` takes a `VisualFeatureStore` folder (vectors or
frame sequences) or an `ImagePathStore` folder (``images.json``; images or frame lists).
``--pictures DIR`` gives feature rows a picture to show (the index's path column; search results
and the page show it): ``DIR/<id>.<ext>``, or the first file of ``DIR/<id>/`` (video frames), as
the demo world's rendered pictures are named. Items that have their own file keep it.

Encoding goes through the checkpoint's processor and ``embed_visual`` (the model's ``get_image_features`` / ``get_video_features``): files are
opened and turned into ``pixel_values`` by the processor inside DataLoader workers, so decoding
runs behind the model's forward. Under ``torchrun`` / ``accelerate launch`` each process encodes
every world-size-th chunk; rank 0 merges.

Resume and incremental rebuilds: finished chunks are written atomically to ``INDEX/shards/``;
the cache key of an item is its **path + size + mtime** (file items) -- a rerun stats the files
instead of reading them all again, and any rewrite by ordinary tools changes the mtime (a
content hash is used where there is no file: dataset rows with embedded bytes, feature rows).
Keys live under a namespace of the model revision and the decoding settings, so a different
checkpoint re-encodes everything. A rerun reuses the previous index and any shards, encodes the
rest, and replaces the folder in one step (`cl2cm_hf.atomic`).

Bad files never stop a build: each is decoded to RGB when it can be (grey, CMYK, alpha, palette,
16-bit) or skipped with a reason in ``report.json`` (empty, truncated, not an image, too many
pixels, unreadable). Skips are cached like embeddings and retried only when the file changes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cl2cm_hf.atomic import atomic_directory, atomic_write_bytes, atomic_write_text, recover_directory
from cl2cm_hf.data.image_paths import to_rgb
from cl2cm_hf.evaluation.encoding import embed_visual, visual_inputs

from .index import (
    DATA_DIR,
    FAISS_FILE,
    INDEX_FORMAT,
    METADATA_FILE,
    REPORT_FILE,
    SHARDS_DIR,
    BrokenIndexError,
    load_checkpoint,
    load_rows,
    model_revision,
)

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
RECALL_QUERIES = 1000  # gallery rows used as queries when measuring the faiss index's recall@10


class BadImage(ValueError):
    """A file that cannot be turned into an RGB image; the message is the reason in the report."""


@dataclass
class Item:
    """One thing to index: id, file (None for features), cache key, caption; `row` for dataset rows."""

    id: str
    path: str | None
    key: str
    caption: str | None = None
    row: int | None = None
    problem: str | None = None  # known bad before decoding (e.g. cannot stat)


@dataclass
class IndexReport:
    """What a build did: counts, the skipped items with reasons, the metadata written."""

    out: Path
    count: int = 0
    encoded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.out}: {self.count} items indexed ({self.encoded} encoded, {self.reused} reused, "
                f"{self.removed} removed), {len(self.skipped)} skipped, {self.seconds:.1f}s")


# --- decoding ---------------------------------------------------------------------------------
def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The RGB image in `source` (a path or bytes); `BadImage` with the reason if there is none."""
    from PIL import Image, UnidentifiedImageError

    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except PermissionError:
        raise BadImage("unreadable: permission denied") from None
    except FileNotFoundError:
        raise BadImage("file not found (deleted while indexing?)") from None
    except OSError as err:
        raise BadImage(f"unreadable: {err.strerror or err}") from None
    with handle:
        try:
            size = len(source) if isinstance(source, bytes) else os.fstat(handle.fileno()).st_size
            if size == 0:
                raise BadImage("empty file (0 bytes)")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
            if image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels: {image.width}x{image.height} (limit {max_pixels}; decompression bomb?)")
            image.load()
            return to_rgb(image)
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image (PIL cannot identify the file)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"too many pixels ({err})") from None
        except PermissionError:
            raise BadImage("unreadable: permission denied") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
            raise BadImage(f"truncated or corrupt image: {err}") from None


# --- sources ----------------------------------------------------------------------------------
def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"file:{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _file_item(item_id: str, path: Path) -> Item:
    path = path.absolute()
    try:
        return Item(item_id, str(path), _file_key(path))
    except FileNotFoundError:
        return Item(item_id, str(path), f"missing:{path}", problem="file not found")
    except OSError as err:
        return Item(item_id, str(path), f"unstat:{path}", problem=f"unreadable: {err.strerror or err}")


def folder_items(folder: Path) -> list[Item]:
    """Every non-hidden file below `folder` (sorted; id = relative posix path); folders that
    cannot be listed become items with the reason."""
    items = []

    def unreadable(err: OSError) -> None:
        rel = Path(err.filename).relative_to(folder).as_posix() if err.filename else str(err)
        items.append(Item(rel + "/", err.filename, f"unlisted:{err.filename}", problem=f"folder unreadable: {err.strerror or err}"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root) / name
                items.append(_file_item(path.relative_to(folder).as_posix(), path))
    return items


def list_items(list_file: Path) -> list[Item]:
    """Paths listed one a line in `list_file` (relative to its folder); id = the line."""
    lines = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
    return [_file_item(line, list_file.parent / line) for line in lines if line and not line.startswith("#")]


def dataset_items(folder: Path):
    """Rows of a `datasets` folder: (items, dataset with undecoded images)."""
    from datasets import Image, load_from_disk

    dataset = load_from_disk(str(folder))
    if "image" in dataset.column_names:
        dataset = dataset.cast_column("image", Image(decode=False))
    elif "path" not in dataset.column_names:
        raise ValueError(f"{folder}: a dataset to index needs an 'image' (datasets.Image) or a 'path' column; found {dataset.column_names}")
    ids = dataset["id"] if "id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    captions = dataset["caption"] if "caption" in dataset.column_names else [None] * len(dataset)
    items = []
    for row in range(len(dataset)):
        if "image" in dataset.column_names:
            image = dataset[row]["image"] or {}
            data, path = image.get("bytes"), image.get("path")
            if data is not None:
                key = "sha256:" + hashlib.sha256(data).hexdigest()
                items.append(Item(str(ids[row]), path, key, captions[row], row))
                continue
        else:
            path = dataset[row]["path"]
        item = _file_item(str(ids[row]), folder / path) if path else Item(str(ids[row]), None, f"row:{row}", problem="no image in this row")
        item.caption, item.row = captions[row], row
        items.append(item)
    return items, dataset


def store_items(folder: Path):
    """Items of a feature store or image/frame store (`load_gallery`); keys hash the feature
    rows, or the frame files' path + size + mtime."""
    from cl2cm_hf.data import ImagePathStore
    from cl2cm_hf.evaluation.query import load_gallery

    store = load_gallery(folder)
    items = []
    for visual_id in store.ids:
        if isinstance(store, ImagePathStore):
            frames = store.paths(visual_id)
            try:
                key = "frames:" + "||".join(_file_key(p.absolute()) for p in frames)
            except OSError as err:
                items.append(Item(visual_id, str(frames[0]), f"missing:{frames[0]}", problem=f"unreadable: {err.strerror or err}"))
                continue
            items.append(Item(visual_id, str(frames[0].absolute()), key))
        else:
            values, mask = store.lookup([visual_id])
            digest = hashlib.sha256(values.numpy().tobytes() + (b"" if mask is None else mask.numpy().tobytes()))
            items.append(Item(visual_id, None, f"features:{visual_id}|{digest.hexdigest()}"))
    return items, store


def attach_pictures(items: list[Item], folder: Path) -> None:
    """Give items without a file (feature rows) their picture in `folder`, if it has one."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such pictures folder (expected <id>.<ext> or <id>/ frame files)")
    # One listing of the folder (not one glob per item): name -> its picture, the first file by name.
    entries = sorted(folder.iterdir())
    shown: dict[str, Path] = {}
    for entry in entries:
        if entry.is_file() and "." in entry.name:
            shown.setdefault(entry.name.rpartition(".")[0], entry)
    for entry in entries:
        if entry.is_dir() and entry.name not in shown:
            first = next((p for p in sorted(entry.iterdir()) if p.is_file()), None)
            if first is not None:
                shown[entry.name] = first
    for item in items:
        if item.path is None and item.id in shown:
            item.path = str(shown[item.id])


def collect_items(images=None, features=None):
    """(items sorted by id, the source description, a dataset or store the loader needs)."""
    if (images is None) == (features is None):
        raise ValueError("pass images= (a folder, a list file or a datasets folder) or features= (a store folder)")
    if features is not None:
        folder = Path(features)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such feature or image store folder")
        items, source = store_items(folder)
        kind = "features"
    else:
        path = Path(images)
        source = None
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            items, source = dataset_items(path)
            kind = "dataset"
        elif path.is_dir():
            items, kind = folder_items(path), "folder"
        elif path.is_file():
            items, kind = list_items(path), "list"
        else:
            raise FileNotFoundError(f"{path}: no such image folder, list file or datasets folder")
    items.sort(key=lambda item: item.id)
    seen = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"{images or features}: id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items, {"kind": kind, "path": str(Path(images or features).absolute())}, source


# --- DataLoader: decoding and the processor run in the workers ---------------------------------
class _Decode(torch.utils.data.Dataset):
    """Item i -> (i, RGB image or None, reason or None)."""

    def __init__(self, items: list[Item], dataset=None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items, self.dataset, self.max_pixels = items, dataset, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if item.problem:
            return i, None, item.problem
        try:
            if item.row is not None and self.dataset is not None and "image" in self.dataset.column_names:
                image = self.dataset[item.row]["image"] or {}
                source = image.get("bytes") or (item.path and Path(item.path))
                return i, open_image(source, self.max_pixels), None
            return i, open_image(item.path, self.max_pixels), None
        except BadImage as err:
            return i, None, str(err)


class _ImageBatch:
    """Collate in the worker: the processor turns the decoded images into ``pixel_values``."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples):
        good = [(i, image) for i, image, reason in samples if reason is None]
        failed = {i: reason for i, image, reason in samples if reason is not None}
        inputs = None
        if good:
            try:
                inputs = dict(self.processor(images=[image for _, image in good], return_tensors="pt"))
            except Exception:  # noqa: BLE001 - one odd image must not sink the batch: retry one by one
                kept, pixels = [], []
                for i, image in good:
                    try:
                        pixels.append(self.processor(images=[image], return_tensors="pt")["pixel_values"])
                        kept.append((i, image))
                    except Exception as err:  # noqa: BLE001
                        failed[i] = f"image processor failed: {type(err).__name__}: {err}"
                good = kept
                inputs = {"pixel_values": torch.cat(pixels)} if pixels else None
        return [i for i, _ in good], inputs, failed


class _StoreBatch:
    """Collate in the worker for stores: `visual_inputs` looks the ids up (features or frames)."""

    def __init__(self, store, processor, items: list[Item]):
        self.store, self.processor, self.items = store, processor, items

    def __call__(self, samples):
        indices = [i for i, _, _ in samples]
        ids = [self.items[i].id for i in indices]
        try:
            return indices, visual_inputs(self.store, ids, self.processor), {}
        except Exception:  # noqa: BLE001 - find the bad items one by one
            failed, kept = {}, []
            for i, visual_id in zip(indices, ids):
                try:
                    visual_inputs(self.store, [visual_id], self.processor)
                    kept.append(i)
                except Exception as err:  # noqa: BLE001
                    failed[i] = f"{type(err).__name__}: {err}"
            inputs = visual_inputs(self.store, [self.items[i].id for i in kept], self.processor) if kept else None
            return kept, inputs, failed


class _StoreIds(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return i, None, self.items[i].problem


# --- shards and the cache ---------------------------------------------------------------------
def _namespace(revision: str, max_pixels: int) -> str:
    return hashlib.sha256(f"{revision}|max_pixels={max_pixels}".encode()).hexdigest()[:16]


def _write_shard(folder: Path, namespace: str, entries: list[dict], embeddings: list[torch.Tensor]) -> None:
    from safetensors.torch import save

    name = hashlib.sha256("\n".join(e["key"] for e in entries).encode()).hexdigest()[:20]
    tensor = torch.stack(embeddings) if embeddings else torch.zeros(0, 0)
    data = save({"embeddings": tensor.contiguous()}, metadata={"entries": json.dumps(entries, ensure_ascii=False)})
    atomic_write_bytes(folder / f"{namespace}-{name}.safetensors", data)


def _read_cache(out: Path, namespace: str) -> tuple[dict[str, np.ndarray], dict[str, str], set[str]]:
    """key -> embedding and key -> skip reason, from the previous index (same namespace) and the
    shards; and the keys the previous index held."""
    from safetensors import safe_open

    done, bad = {}, {}
    if _read_json(out / METADATA_FILE).get("namespace") == namespace:
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
        except Exception:  # noqa: BLE001 - written atomically, so only a foreign file lands here
            continue
        row = 0
        for entry in entries:
            if entry.get("reason") is None:
                done[entry["key"]] = tensor[row]
                row += 1
            else:
                bad[entry["key"]] = entry["reason"]
    return done, bad, previous


# --- the build --------------------------------------------------------------------------------
def _chunks(pending: list[int], chunk_size: int) -> list[list[int]]:
    return [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]


@torch.no_grad()
def _encode_chunks(model, processor, items, source, chunks, shards: Path, namespace: str, batch_size: int,
                   num_workers: int, max_pixels: int, device, progress: bool) -> None:
    """Encode the items of `chunks` (lists of positions in `items`) and write one shard per chunk."""
    if not chunks:
        return
    order = [i for chunk in chunks for i in chunk]
    local = [items[i] for i in order]
    if source is not None and hasattr(source, "lookup"):
        dataset, collate = _StoreIds(local), _StoreBatch(source, processor, local)
        if source.output_key == "visual_features":
            num_workers = 0  # nothing to decode; a worker would get a pickled copy of the whole array
    else:
        dataset, collate = _Decode(local, source, max_pixels), _ImageBatch(processor)
    batches, start = [], 0
    for chunk in chunks:  # batches never cross a chunk, so a chunk is a shard
        batches += [list(range(a, min(a + batch_size, start + len(chunk)))) for a in range(start, start + len(chunk), batch_size)]
        start += len(chunk)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                         persistent_workers=False, prefetch_factor=4 if num_workers else None)
    chunk_end = np.cumsum([len(c) for c in chunks]).tolist()
    shards.mkdir(parents=True, exist_ok=True)
    entries, vectors, current = [], [], 0
    with tqdm(total=len(local), desc="index", unit="img", disable=not progress) as bar:
        for positions, inputs, failed in loader:
            embedded = {}
            if inputs:
                out = embed_visual(model, **{k: v.to(device) for k, v in inputs.items()}).float().cpu()
                embedded = dict(zip(positions, out))
            for p in sorted(set(positions) | set(failed)):
                item = local[p]
                if p in embedded:
                    entries.append({"key": item.key, "id": item.id})
                    vectors.append(embedded[p])
                else:
                    entries.append({"key": item.key, "id": item.id, "reason": failed[p]})
            batch_end = max(set(positions) | set(failed)) + 1
            bar.update(len(set(positions) | set(failed)))
            if batch_end == chunk_end[current]:
                _write_shard(shards, namespace, entries, vectors)
                entries, vectors, current = [], [], current + 1


def _faiss_part(embeddings: np.ndarray, folder: Path, faiss_type: str) -> dict | None:
    """Write ``faiss.index`` and return its metadata (type, parameters, recall@10 vs exact)."""
    if faiss_type == "none" or len(embeddings) == 0:
        return None
    try:
        import faiss
    except ImportError:
        if faiss_type != "auto":
            raise
        return None
    from cl2cm_hf.retrieval import build_faiss_index, faiss_recall_at_k

    index_type = "hnsw" if faiss_type == "auto" else faiss_type
    index = build_faiss_index(embeddings, index_type)
    pick = np.sort(np.random.default_rng(0).choice(len(embeddings), size=min(RECALL_QUERIES, len(embeddings)), replace=False))
    k = min(10, len(embeddings))
    recall = faiss_recall_at_k(index, embeddings[pick], embeddings, k=k)
    faiss.write_index(index, str(folder / FAISS_FILE))
    info = {"type": index_type, "file": FAISS_FILE, "recall@10": recall, "recall_k": k, "recall_queries": len(pick),
            "recall_query_source": "gallery rows (seeded sample)"}
    if index_type == "hnsw":
        info.update(hnsw_m=index.hnsw.nb_neighbors(1), ef_search=index.hnsw.efSearch)
    return info


def _write_index(tmp: Path, items, done, bad, metadata: dict, faiss_type: str) -> tuple[int, list[dict]]:
    import pyarrow as pa
    from datasets import Dataset

    kept = [item for item in items if item.key in done]
    skipped = [{"id": item.id, "file": item.path, "reason": bad[item.key], "key": item.key}
               for item in items if item.key not in done]
    dim = int(next(iter(done.values())).shape[0]) if kept else 0
    embeddings = np.stack([done[item.key] for item in kept]).astype(np.float32) if kept else np.zeros((0, dim), np.float32)
    table = pa.table({
        "id": pa.array([item.id for item in kept], pa.string()),
        "path": pa.array([item.path for item in kept], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), max(dim, 1))
        if kept else pa.array([], pa.list_(pa.float32(), 1)),
        "caption": pa.array([item.caption for item in kept], pa.string()),
        "key": pa.array([item.key for item in kept], pa.string()),
    })
    Dataset(table).save_to_disk(str(tmp / DATA_DIR), num_shards=1)
    metadata.update(dim=dim, count=len(kept), skipped=len(skipped), faiss=_faiss_part(embeddings, tmp, faiss_type))
    atomic_write_text(tmp / REPORT_FILE, json.dumps({"skipped": skipped}, indent=1, ensure_ascii=False))
    atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=1, ensure_ascii=False))
    return len(kept), skipped


def build_index(model, out, *, images=None, features=None, processor=None, batch_size: int = 64,
                num_workers: int = 2, chunk_size: int = 1024, max_pixels: int = DEFAULT_MAX_PIXELS,
                faiss: str = "auto", device=None, progress: bool = True, pictures=None) -> IndexReport:
    """Index `images` (folder, list file or datasets folder) or `features` (store folder) with the
    checkpoint `model` (a folder or hub id) into folder `out`; see the module docstring.

    `pictures`: a folder with a picture per feature row (``<id>.<ext>`` or ``<id>/`` frames), stored
    as the row's path so that results can be shown.

    `chunk_size` items make one shard (the unit of resume and of the split across processes);
    `faiss`: ``"auto"`` (HNSW when faiss is importable), ``"hnsw"``, ``"flat"``, ``"ivf_flat"``
    or ``"none"``. Returns the `IndexReport` (complete on rank 0)."""
    from accelerate import PartialState

    started = time.perf_counter()
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    device = device or state.device
    if chunk_size % batch_size:
        chunk_size = max(batch_size, chunk_size // batch_size * batch_size)  # batches must tile a chunk
    out = Path(out).absolute()
    recover_directory(out)
    loaded_model, loaded_processor = load_checkpoint(model, device)
    processor = processor or loaded_processor
    revision = model_revision(model, loaded_model)
    namespace = _namespace(revision, max_pixels)
    items, source_info, source = collect_items(images, features)
    if pictures is not None:
        attach_pictures(items, pictures)
        pictures = str(Path(pictures).absolute())
    if not items:
        raise ValueError(f"{images or features}: nothing to index (no files found)")

    done, bad, previous = _read_cache(out, namespace)
    pending = [i for i, item in enumerate(items) if item.key not in done and item.key not in bad]
    state.wait_for_everyone()  # every process has read the cache before any writes a shard: the same plan
    chunks = _chunks(pending, chunk_size)
    mine = [chunk for n, chunk in enumerate(chunks) if n % state.num_processes == state.process_index]
    _encode_chunks(loaded_model, processor, items, source, mine, out / SHARDS_DIR, namespace, batch_size,
                   num_workers, max_pixels, device, progress and state.is_main_process)
    state.wait_for_everyone()
    keys = {item.key for item in items}
    report = IndexReport(out, reused=len(items) - len(pending), removed=len(previous - keys))
    unchanged = not pending and previous == keys and not (out / SHARDS_DIR).exists()
    old = _read_json(out / METADATA_FILE)
    if state.is_main_process and unchanged and (old.get("faiss_request"), old.get("pictures")) == (faiss, pictures):
        # Nothing changed since the last complete build: keep it (a faiss rebuild can take minutes).
        report.metadata = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))
        report.count = report.metadata["count"]
        report.skipped = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))["skipped"]
    elif state.is_main_process:
        done, bad, _ = _read_cache(out, namespace)
        missing = [item.id for item in items if item.key not in done and item.key not in bad]
        if missing:
            raise RuntimeError(f"{out}: {len(missing)} items were not encoded (first: {missing[0]!r}); rerun to finish")
        metadata = {
            "format": INDEX_FORMAT, "model": _model_name(model), "model_revision": revision, "namespace": namespace,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source_info,
            "cache_key": "path + size + mtime (files); sha256 of the content (dataset bytes, feature rows)",
            "max_pixels": max_pixels, "faiss_request": faiss, "pictures": pictures,
        }
        with atomic_directory(out) as tmp:
            report.count, report.skipped = _write_index(tmp, items, done, bad, metadata, faiss)
        report.metadata = metadata
        report.encoded = sum(1 for i in pending if items[i].key in done)
    state.wait_for_everyone()
    report.seconds = time.perf_counter() - started
    return report


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _model_name(model) -> str:
    return str(Path(model).absolute()) if Path(model).is_dir() else str(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-index", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="cross-modal checkpoint folder or hub id")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="image folder, text file listing image paths, or a datasets folder")
    what.add_argument("--features", help="feature store or image/frame store folder")
    parser.add_argument("--pictures", help="folder of pictures shown for feature rows: <id>.<ext> or <id>/ frames")
    parser.add_argument("--out", required=True, help="index folder (created, or updated in place)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding images")
    parser.add_argument("--chunk-size", type=int, default=1024, help="items per shard (resume and process split unit)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are skipped")
    parser.add_argument("--faiss", default="auto", choices=["auto", "hnsw", "flat", "ivf_flat", "none"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = build_index(args.model, args.out, images=args.images, features=args.features, batch_size=args.batch_size,
                             num_workers=args.num_workers, chunk_size=args.chunk_size, max_pixels=args.max_pixels,
                             faiss=args.faiss, device=args.device, progress=not args.no_progress, pictures=args.pictures)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"cl2cm-index: error: {err}", file=sys.stderr)
        return 2
    if report.metadata:
        print(report.summary())
        for entry in report.skipped:
            print(f"  skipped {entry['file'] or entry['id']}: {entry['reason']}")
        if report.metadata.get("faiss"):
            info = report.metadata["faiss"]
            print(f"  faiss {info['type']}: recall@{info['recall_k']} {info['recall@10']:.3f} against exact search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
