"""Build a search index over a user's images, videos or precomputed features (``cl2cm-index``).

    cl2cm-index MODEL --images DIR|LIST|DATASET --out INDEX
    cl2cm-index MODEL --videos DIR|LIST --out INDEX [--num-frames 8]   # video files only
    cl2cm-index MODEL --features STORE --out INDEX          # feature store or image/frame store
    torchrun --nproc_per_node 2 -m cl2cm_hf.cli.index MODEL --images DIR --out INDEX

Inputs: a folder (every non-hidden file below it, id = the path relative to it; symlinked
sub-folders are followed, and one that leads to a folder already listed -- a loop, or a second
link to the same folder -- is skipped and reported), a text file
listing image paths (one a line, relative to the list's folder; id = the line), or a `datasets`
folder saved with ``save_to_disk`` (an ``image`` column of `datasets.Image` or a ``path`` column;
optional ``id`` and ``caption``). ``--features`` takes a `VisualFeatureStore` folder (vectors or
frame sequences) or an `ImagePathStore` folder (``images.json``; images or frame lists).
``--pictures DIR`` gives feature rows a picture to show (the index's path column; search results
and the page show it): ``DIR/<id>.<ext>``, or the first file of ``DIR/<id>/`` (video frames), as
the demo world's rendered pictures are named. Items that have their own file keep it.

Videos: a file with a video extension (``.mp4``, ``.webm``, ``.mkv``, ``.mov``, ...), or one PIL
cannot read in which FFmpeg finds a video stream, is decoded with transformers' ``load_video``
(PyAV; ``pip install 'cl2cm-hf[video]'``) to ``num_frames`` frames sampled uniformly, in the
DataLoader workers, and embedded with ``get_video_features``; pictures beside it keep the image
path. Empty, truncated, audio-only, zero-frame and longer-than-``max_video_seconds`` files are
skipped with the reason. ``--videos`` takes videos only (a picture there is skipped, saying so). A
model that reads precomputed features cannot decode files: index its frame features with
``--features STORE --pictures DIR`` (``DIR/<id>.mp4``) to show the clips. The sampling settings are
part of every possible video's cache key, so changing them re-encodes the videos and nothing else.

Encoding goes through the checkpoint's processor and ``embed_visual`` (the model's ``get_image_features`` / ``get_video_features``): files are
opened and turned into ``pixel_values`` by the processor inside DataLoader workers, so decoding
runs behind the model's forward. Under ``torchrun`` / ``accelerate launch`` each process encodes
every world-size-th chunk; rank 0 merges.

Resume and incremental rebuilds: finished chunks are written atomically to ``INDEX/shards/``;
the cache key of an item is, by default (``--compare mtime``), its **path + size + mtime** (file
items) -- a rerun stats the files instead of reading them all again; a file rewritten with the same
size and mtime (``touch -r``, some sync tools) keeps its old embedding. ``--compare hash`` keys
files by the sha256 of their content instead (each rerun reads every file). A content hash is
always used where there is no file: dataset rows with embedded bytes, feature rows.
Keys live under a namespace of the model revision and the decoding settings, so a different
checkpoint re-encodes everything. A rerun reuses the previous index and any shards, encodes the
rest, and replaces the folder in one step (`cl2cm_hf.atomic`).

Bad files never stop a build: each is decoded to RGB when it can be (grey, CMYK, alpha, palette,
16-bit) or skipped with a reason in ``report.json`` (empty, truncated, not an image, too many
pixels, unreadable, a name that is not UTF-8 or holds control characters: printed escaped). Skips
are cached like embeddings and retried only when the file changes. A build that indexes nothing
exits with status 2. A symlinked picture is indexed as the file it points to (the index, and the
page, know only that file).

``--out`` must be a new or empty folder or an index cl2cm-index wrote (`out_folder`); replacing an
index of another source takes ``--overwrite``.

Memory does not grow with the number of items N: the items and the rerun cache's key -> place map live in
a temporary sqlite table on disk (`ItemTable`, page cache `item_table.CACHE_MIB` = 16 MiB), sorted by id
there; the build then goes through them `WINDOW` (W = 65,536) at a time: look up, encode the window's
new items in shards of `chunk_size` (C), and finally write ``data/`` and ``embeddings.npy`` `WRITE_ROWS`
(65,536) rows at a time with plain file writes. Held at once, for embeddings of dim d: a window of `Item`s
(two while the next is fetched; a few hundred bytes each: ids, paths, keys), one shard tensor (C x d x 4
bytes) and one block of embeddings (W x d x 4: 16 MiB at d = 64), the DataLoader's prefetched batches, and
for ``--features`` one block of feature rows (at most `SavedFeatures.BLOCK_BYTES` = 64 MiB, fewer rows
when rows are long) read through a memory map closed after each block. Folders, list files and
datasets are listed, and feature stores read from ``ids.json`` on, a window at a time. Not bounded by
this: the skip report (one entry per skipped item), image/frame stores (listed as one list before it
goes to the table), the folders walked (one entry per folder) and ``--pictures`` (one entry per picture).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import atomic_directory, atomic_write_text, recover_directory
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import check_int
from cl2cm_hf.search.decode import DEFAULT_MAX_PIXELS
from cl2cm_hf.search.decode_video import DEFAULT_MAX_SECONDS, mark_video_keys, video_settings
from cl2cm_hf.search.encode import chunked, encode_chunks
from cl2cm_hf.search.fingerprint import load_checkpoint, model_display_name, model_files, model_fingerprint, model_revision
from cl2cm_hf.search.index_files import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    INDEX_FORMAT,
    METADATA_FILE,
    REPORT_FILE,
    SHARDS_DIR,
    RowsWriter,
)
from cl2cm_hf.search.item_table import ItemTable
from cl2cm_hf.search.out_folder import INDEX_MARKER, check_out_folder, mark_index_folder
from cl2cm_hf.search.query_encoder import QUERY_ENCODER_DIR, QUERY_MAX_LENGTH, export_query_encoder
from cl2cm_hf.search.shards import EmbeddingCache, cache_namespace, read_cache, read_json
from cl2cm_hf.search.sources import COMPARE, SavedFeatures, attach_pictures, collect_items, pictures_by_id, rekey_by_content

RECALL_QUERIES = 1000  # gallery rows used as queries when measuring the faiss index's recall@10
WINDOW = 1 << 16  # items listed, looked up in the cache and sent to the encoder at a time
WRITE_ROWS = 1 << 16  # items (embeddings and columns) written to the index folder at a time
FAISS_KINDS = ("auto", "hnsw", "flat", "ivf_flat", "ivfpq", "none")


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


def _faiss_part(embeddings: np.ndarray, folder: Path, faiss_type: str, ann_budget: int) -> dict | None:
    """Write the approximate index and return its metadata (type, parameters, recall@10 vs exact):
    ``faiss.index`` (hnsw, ivf_flat, flat) or the compressed ``ann.index`` (ivfpq, `cl2cm_hf.search.ann`)."""
    if faiss_type == "none" or len(embeddings) == 0:
        return None
    try:
        import faiss
    except ImportError:
        if faiss_type != "auto":
            raise
        return None
    if faiss_type == "ivfpq":
        from cl2cm_hf.search.ann import ShardRows, build_ann

        return build_ann(ShardRows([embeddings]), folder, ann_budget)
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


def _write_index(tmp: Path, table: ItemTable, count: int, metadata: dict, faiss_type: str, ann_budget: int) -> tuple[int, list[dict]]:
    """The index folder's files, `WRITE_ROWS` items at a time in id order: their embeddings read back
    from the cache (`EmbeddingCache`: one shard held at a time) and written with their columns
    (`RowsWriter`); `count` items have an embedding."""
    writer, cache, skipped = RowsWriter(tmp, count), EmbeddingCache(table), []
    for rows in table.windows(WRITE_ROWS):
        kept = [(item, place) for item, place, _ in rows if place is not None]
        skipped += [{"id": item.id, "file": item.path, "reason": reason, "key": item.key} for item, place, reason in rows if place is None]
        if kept:
            columns = {"id": [i.id for i, _ in kept], "path": [i.path for i, _ in kept],
                       "caption": [i.caption for i, _ in kept], "key": [i.key for i, _ in kept]}
            writer.write(columns, cache.rows([place for _, place in kept]))
    dim = writer.close()
    stored = np.load(tmp / EMBEDDINGS_FILE, mmap_mode="r")
    metadata.update(dim=dim, count=count, skipped=len(skipped), faiss=_faiss_part(stored, tmp, faiss_type, ann_budget))
    atomic_write_text(tmp / REPORT_FILE, json.dumps({"skipped": skipped}, indent=1, ensure_ascii=False))
    atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=1, ensure_ascii=False))
    return count, skipped


def build_index(model, out, *, images=None, features=None, processor=None, batch_size: int = 64,
                num_workers: int = 2, chunk_size: int = 1024, max_pixels: int = DEFAULT_MAX_PIXELS,
                faiss: str = "auto", device=None, progress: bool = True, pictures=None, compare: str = "mtime",
                overwrite: bool = False, videos=None, num_frames: int | None = None,
                max_video_seconds: float = DEFAULT_MAX_SECONDS, ann_budget_mb: int = 1024, encoder=None,
                query_encoder: bool = True) -> IndexReport:
    """Index `images` (folder, list file or datasets folder: pictures, and videos recognised by
    extension or container), `videos` (the same, videos only: a still image is skipped with the
    reason) or `features` (store folder) with the checkpoint `model` (a folder or hub id) into
    folder `out`; see the module docstring. Videos are sampled to `num_frames` frames (default: the
    checkpoint's video processor's, else 8); longer than `max_video_seconds` are skipped.
    `ann_budget_mb`: the RAM the served ``faiss="ivfpq"`` index may take (`cl2cm_hf.search.ann`).

    `out` must be missing, empty or an index of the same source (`check_out_folder`; an index of
    another source is replaced only with `overwrite`). `pictures`: a folder with a picture per
    feature row (``<id>.<ext>`` or ``<id>/`` frames), stored as the row's path so that results can
    be shown. `compare`: what an incremental rebuild compares to find changed files (`COMPARE`).

    `chunk_size` items make one shard (the unit of resume and of the split across processes; rounded
    down to a multiple of `batch_size`); `faiss`: ``"auto"`` (HNSW when faiss is importable),
    ``"hnsw"``, ``"flat"``, ``"ivf_flat"``, ``"ivfpq"`` (compressed, chosen for `ann_budget_mb` MiB of RAM:
    `cl2cm_hf.search.ann`) or ``"none"``. `encoder`: encodes the pending chunks instead of this process
    (`cl2cm_hf.search.ray_build`), called as ``encoder(items, chunks, shards_folder, namespace, video=,
    batch_size=, num_workers=, max_pixels=)``; it must leave one shard a chunk, as `encode_chunks` writes
    them. `query_encoder`: also write the text tower as ONNX (`cl2cm_hf.search.query_encoder`: a text
    search in a fresh process then imports neither torch nor transformers; a few seconds of export).
    Returns the `IndexReport` (complete on rank 0)."""
    from accelerate import PartialState

    started = time.perf_counter()
    batch_size, num_workers = check_int("batch_size", batch_size), check_int("num_workers", num_workers)
    chunk_size, max_pixels = check_int("chunk_size", chunk_size), check_int("max_pixels", max_pixels)
    ann_budget_mb = check_int("ann_budget_mb", ann_budget_mb)
    if not isinstance(query_encoder, bool):
        raise CL2CMError(f"query_encoder must be True or False, got {query_encoder!r}")
    for name, value, allowed in (("faiss", faiss, FAISS_KINDS), ("compare", compare, tuple(COMPARE))):
        if value not in allowed:
            raise CL2CMError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if sum(x is not None for x in (images, videos, features)) != 1:
        raise CL2CMError("pass images= or videos= (a folder, a list file or a datasets folder) or features= (a store folder)")
    device = _checked_device(device)
    source_path = Path(next(x for x in (images, videos, features) if x is not None)).absolute()
    out = check_out_folder(out, source_path, {"--images": images, "--videos": videos, "--features": features,
                                              "--pictures": pictures}, model, overwrite)
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    device = device or state.device
    if chunk_size % batch_size:
        chunk_size = max(batch_size, chunk_size // batch_size * batch_size)  # batches must tile a chunk
    recover_directory(out)
    loaded_model, loaded_processor = load_checkpoint(model, device)
    processor = processor or loaded_processor
    revision = model_revision(model, loaded_model)
    namespace = cache_namespace(revision, max_pixels)
    video = video_settings(loaded_processor, num_frames, max_video_seconds, videos_only=videos is not None)
    table = ItemTable()
    try:
        blocks, source_info, source = collect_items(images if videos is None else videos, features, WINDOW)
        shown = None if pictures is None else pictures_by_id(pictures)
        for block in blocks:  # every process lists the items (the same plan on each)
            if compare == "hash":
                rekey_by_content(block)
            if features is None:
                mark_video_keys(block, video)
            if shown is not None:
                attach_pictures(block, shown)
            table.add(block)
        del shown
        table.finish(images or videos or features)
        if not len(table):
            raise CL2CMError(f"{images or videos or features}: nothing to index (no files found)")
        pictures = None if pictures is None else str(Path(pictures).absolute())
        state.wait_for_everyone()  # every process has checked --out before the main one marks it
        if state.is_main_process and not (out / INDEX_MARKER).is_file():
            out.mkdir(parents=True, exist_ok=True)
            mark_index_folder(out, source_path)  # before any shard: a killed first build is still known as ours
        state.wait_for_everyone()
        read_cache(out, namespace, table)
        state.wait_for_everyone()  # every process has read the cache before any writes a shard: the same plan
        pending = _encode_windows(table, state, loaded_model, processor, source, out, namespace, chunk_size, batch_size,
                                  num_workers, max_pixels, device, progress and state.is_main_process, video, encoder)
        state.wait_for_everyone()
        report = _finish(table, state, out, pending, model, loaded_model, revision, namespace, source_path,
                         source_info, compare, max_pixels, faiss, ann_budget_mb, pictures, features, video,
                         loaded_processor if query_encoder else None)
    finally:
        table.close()
    state.wait_for_everyone()
    report.seconds = time.perf_counter() - started
    return report


def _encode_windows(table, state, model, processor, source, out, namespace, chunk_size, batch_size, num_workers,
                    max_pixels, device, progress, video, encoder=None) -> int:
    """Encode the items the cache has not seen, a window of items at a time, into shards (by `encoder`
    when given); chunks are numbered across windows and dealt to the processes in turn. Returns the
    number of such items."""
    window = source.rows if isinstance(source, SavedFeatures) else WINDOW
    pending_count, chunk_number = 0, 0
    for rows in table.windows(window):
        pending = [p for p, (_, place, reason) in enumerate(rows) if place is None and reason is None]
        pending_count += len(pending)
        mine = []
        for chunk in chunked(pending, chunk_size):
            if chunk_number % state.num_processes == state.process_index:
                mine.append(chunk)
            chunk_number += 1
        if not mine:
            continue
        items = [item for item, _, _ in rows]
        if encoder is not None:
            encoder(items, mine, out / SHARDS_DIR, namespace, video=video, batch_size=batch_size,
                    num_workers=num_workers, max_pixels=max_pixels)
        else:
            read = source.window([items[p] for chunk in mine for p in chunk]) if isinstance(source, SavedFeatures) else source
            encode_chunks(model, processor, items, read, mine, out / SHARDS_DIR, namespace, batch_size,
                          num_workers, max_pixels, device, progress, video)
    return pending_count


def _finish(table, state, out, pending, model, loaded_model, revision, namespace, source_path, source_info,
            compare, max_pixels, faiss, ann_budget_mb, pictures, features, video, query_processor) -> IndexReport:
    """The report; on the main process, the index folder written (or the previous one kept when nothing
    changed), with the query encoder of `loaded_model` and `query_processor` when that is given."""
    report = IndexReport(out, reused=len(table) - pending, removed=table.counts()["removed"])
    unchanged = not pending and not report.removed and not (out / SHARDS_DIR).exists()  # no shard: none left, none new
    old = read_json(out / METADATA_FILE)
    fingerprint = model_fingerprint(loaded_model)
    wanted = query_processor is not None
    if state.is_main_process and unchanged and (old.get("faiss_request"), old.get("ann_budget_mb"), old.get("pictures"), old.get("model_fingerprint"),
                                                 old.get("source"), old.get("query_encoder_request")) == (
                                                     faiss, ann_budget_mb, pictures, fingerprint, source_info, wanted):
        # Nothing changed since the last complete build: keep it (a faiss rebuild can take minutes).
        report.metadata = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))
        report.count = report.metadata["count"]
        report.skipped = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))["skipped"]
    elif state.is_main_process:
        read_cache(out, namespace, table, fresh=True)  # the shards this build wrote
        counts = table.counts()
        if counts["missing"]:
            raise RuntimeError(f"{out}: {counts['missing']} items were not encoded (first: {table.first_missing()!r}); rerun to finish")
        metadata = {
            "format": INDEX_FORMAT, "model": _model_name(model), "model_name": model_display_name(model),
            "model_revision": revision, "model_fingerprint": fingerprint, "model_files": model_files(model), "namespace": namespace,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source_info,
            "cache_key": f"{COMPARE[compare]}; sha256 of the content (dataset bytes, feature rows)", "compare": compare,
            "max_pixels": max_pixels, "faiss_request": faiss, "ann_budget_mb": ann_budget_mb, "pictures": pictures,
            "video": None if features is not None else asdict(video), "query_encoder_request": wanted,
        }
        with atomic_directory(out) as tmp:
            mark_index_folder(tmp, source_path)
            if wanted:
                metadata["query_encoder"] = export_query_encoder(loaded_model, query_processor, tmp / QUERY_ENCODER_DIR,
                                                                 QUERY_MAX_LENGTH)
            report.count, report.skipped = _write_index(tmp, table, counts["kept"], metadata, faiss, ann_budget_mb << 20)
        report.metadata = metadata
        report.encoded = counts["encoded"]
    return report


def _checked_device(device):
    """`device` as given, after checking that torch knows it and that it is there."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise CL2CMError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise CL2CMError(f"device {device!r}: no such CUDA device here ({torch.cuda.device_count()} found)")
    return device


def _model_name(model) -> str:
    return str(Path(model).absolute()) if Path(model).is_dir() else str(model)
