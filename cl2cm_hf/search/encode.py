"""Encoding items into shards (the mapper stage): files are decoded and turned into model inputs by the
processor inside DataLoader workers, so decoding runs behind the model's forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cl2cm_hf.inference import embed_visual, visual_inputs
from cl2cm_hf.search.decode import DEFAULT_MAX_PIXELS, BadImage, open_image
from cl2cm_hf.search.shards import write_shard
from cl2cm_hf.search.sources import Item


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
            except Exception:
                kept, pixels = [], []
                for i, image in good:
                    try:
                        pixels.append(self.processor(images=[image], return_tensors="pt")["pixel_values"])
                        kept.append((i, image))
                    except Exception as err:
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
        except Exception:
            failed, kept = {}, []
            for i, visual_id in zip(indices, ids):
                try:
                    visual_inputs(self.store, [visual_id], self.processor)
                    kept.append(i)
                except Exception as err:
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


def chunked(pending: list[int], chunk_size: int) -> list[list[int]]:
    return [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]


@torch.no_grad()
def encode_chunks(model, processor, items, source, chunks, shards: Path, namespace: str, batch_size: int,
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
                write_shard(shards, namespace, entries, vectors)
                entries, vectors, current = [], [], current + 1
