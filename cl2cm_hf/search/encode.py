"""Encoding items into shards (the mapper stage): files (images, and videos sampled to a few frames)
are decoded and turned into model inputs by the processor inside DataLoader workers, so decoding
runs behind the model's forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cl2cm_hf.inference import embed_visual, visual_inputs
from cl2cm_hf.search.decode import DEFAULT_MAX_PIXELS, BadImage, open_image
from cl2cm_hf.search.decode_video import DEFAULT_VIDEO, BadVideo, VideoSettings, is_video_path, open_video, video_inputs
from cl2cm_hf.search.shards import write_shard
from cl2cm_hf.search.sources import Item


class _Decode(torch.utils.data.Dataset):
    """Item i -> (i, an RGB image or ``(T, H, W, 3)`` video frames or None, reason or None). Files with a
    video extension are decoded as videos; a file PIL cannot identify is tried as a video container."""

    def __init__(self, items: list[Item], dataset=None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 video: VideoSettings = DEFAULT_VIDEO):
        self.items, self.dataset, self.max_pixels, self.video = items, dataset, max_pixels, video

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
                return i, self._still(open_image(source, self.max_pixels)), None
            if is_video_path(item.path):
                return i, open_video(item.path, self.video, self.max_pixels), None
            return i, self._still(open_image(item.path, self.max_pixels)), None
        except BadImage as err:
            if str(err).startswith("not an image"):
                return self._container(i, item, err)
            return i, None, str(err)
        except BadVideo as err:
            return i, None, str(err)

    def _still(self, image):
        if self.video.videos_only:
            raise BadImage("a still image, not a video: this index takes videos only (index pictures and videos "
                           "together with --images)")
        return image

    def _container(self, i: int, item: Item, err: BadImage):
        """A file with an unknown extension that is no image: a video if FFmpeg finds a video stream in it."""
        try:
            return i, open_video(item.path, self.video, self.max_pixels, sniffed=True), None
        except BadVideo:
            return i, None, "not an image or a video (neither PIL nor FFmpeg can read the file)"


def _encoded(processor, media: list) -> dict:
    images = [m for m in media if not isinstance(m, np.ndarray)]
    return dict(processor(images=images, return_tensors="pt")) if images else video_inputs(processor, media)


class _MediaBatch:
    """Collate in the worker: the processor turns the decoded images into ``pixel_values`` and the
    videos into ``pixel_values (B, T, 3, H, W)`` + ``visual_mask``, as two groups (an image is
    embedded the same whatever it is batched with)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples):
        failed = {i: reason for i, media, reason in samples if reason is not None}
        groups = []
        for is_video in (False, True):
            good = [(i, m) for i, m, reason in samples if reason is None and isinstance(m, np.ndarray) == is_video]
            if good:
                groups.append(self._group(good, failed))
        return [(positions, inputs) for positions, inputs in groups if positions], failed

    def _group(self, good, failed):
        try:
            return [i for i, _ in good], _encoded(self.processor, [m for _, m in good])
        except Exception:
            kept, inputs = [], []
            for i, media in good:
                try:
                    inputs.append(_encoded(self.processor, [media]))
                    kept.append(i)
                except Exception as err:
                    kind = "video" if isinstance(media, np.ndarray) else "image"
                    failed[i] = f"{kind} processor failed: {type(err).__name__}: {err}"
            return kept, _concatenated(inputs)


def _concatenated(inputs: list[dict]) -> dict | None:
    """One batch of several single-item batches (videos padded to the longest)."""
    if not inputs:
        return None
    if "visual_mask" not in inputs[0]:
        return {"pixel_values": torch.cat([x["pixel_values"] for x in inputs])}
    longest = max(x["visual_mask"].shape[1] for x in inputs)

    def pad(t):
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, longest - t.shape[1]))

    return {key: torch.cat([pad(x[key]) for x in inputs]) for key in ("pixel_values", "visual_mask")}


class _StoreBatch:
    """Collate in the worker for stores: `visual_inputs` looks the ids up (features or frames)."""

    def __init__(self, store, processor, items: list[Item]):
        self.store, self.processor, self.items = store, processor, items

    def __call__(self, samples):
        indices = [i for i, _, _ in samples]
        ids = [self.items[i].id for i in indices]
        try:
            return [(indices, visual_inputs(self.store, ids, self.processor))], {}
        except Exception:
            failed, kept = {}, []
            for i, visual_id in zip(indices, ids):
                try:
                    visual_inputs(self.store, [visual_id], self.processor)
                    kept.append(i)
                except Exception as err:
                    failed[i] = f"{type(err).__name__}: {err}"
            inputs = visual_inputs(self.store, [self.items[i].id for i in kept], self.processor) if kept else None
            return ([(kept, inputs)] if kept else []), failed


class _StoreIds(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return i, None, self.items[i].problem


def chunked(pending: list[int], chunk_size: int) -> list[list[int]]:
    return [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]


@torch.no_grad()
def encode_chunks(model, processor, items, source, chunks, shards: Path, namespace: str, batch_size: int,
                   num_workers: int, max_pixels: int, device, progress: bool, video: VideoSettings = DEFAULT_VIDEO) -> None:
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
        dataset, collate = _Decode(local, source, max_pixels, video), _MediaBatch(processor)
    batches, start = [], 0
    for chunk in chunks:  # batches never cross a chunk, so a chunk is a shard
        batches += [list(range(a, min(a + batch_size, start + len(chunk)))) for a in range(start, start + len(chunk), batch_size)]
        start += len(chunk)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                         persistent_workers=False, prefetch_factor=4 if num_workers else None)
    chunk_end = np.cumsum([len(c) for c in chunks]).tolist()
    shards.mkdir(parents=True, exist_ok=True)
    entries, vectors, current = [], [], 0
    with tqdm(total=len(local), desc="index", unit="item", disable=not progress) as bar:
        for groups, failed in loader:
            embedded = {}
            for group, inputs in groups:
                out = embed_visual(model, **{k: v.to(device) for k, v in inputs.items()}).float().cpu()
                embedded.update(zip(group, out))
            positions = list(embedded)
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
                write_shard(shards, namespace, entries, vectors)
                entries, vectors, current = [], [], current + 1
