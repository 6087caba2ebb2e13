"""Images on disk looked up by visual id, for the backbone mode (a vision tower on pixel values).

An item is one image file, or (video) a list of frame files. ``lookup`` opens the files with PIL
and runs the caller's transformers image processor: ``(pixel_values (B, 3, H, W), None)`` for
images, ``(pixel_values (B, T, 3, H, W), mask (B, T))`` for frame lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .features import index_ids, read_id_list, rows_of


class ImagePathStore:
    """Visual id -> image path(s); same lookup contract as `VisualFeatureStore`."""

    output_key = "pixel_values"  # batch key the collators use

    def __init__(
        self, paths: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], image_processor=None, name: str | None = None
    ):
        self.name = name or f"image path store ({len(paths)} items)"
        self._ids, self._index = index_ids(paths.keys(), self.name)
        kinds = {isinstance(p, (str, os.PathLike)) for p in paths.values()}
        if len(kinds) > 1:
            raise ValueError(f"{self.name}: mixes single images and frame lists; use one kind for all items")
        self._is_video = kinds == {False}
        self._paths = [[Path(p)] if not self._is_video else [Path(f) for f in p] for p in paths.values()]
        for visual_id, frames in zip(self._ids, self._paths):
            if not frames:
                raise ValueError(f"{self.name}: visual_id {visual_id!r} has no frame files")
        self.image_processor = image_processor

    @classmethod
    def from_split_file(
        cls, ids: Sequence[str] | str | os.PathLike, image_root: str | os.PathLike, image_processor=None
    ) -> "ImagePathStore":
        """Items named by file (e.g. a Multi30K image split, ids = file names) under `image_root`."""
        root = Path(image_root)
        return cls({i: root / i for i in read_id_list(ids)}, image_processor, name=f"image path store {root}")

    def paths(self, visual_id: str) -> list[Path]:
        return list(self._paths[rows_of(self._index, [visual_id], self.name)[0]])

    def _open(self, visual_id: str, path: Path):
        from PIL import Image

        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: image of visual_id {visual_id!r} not found: {path}")
        with Image.open(path) as image:
            return image.convert("RGB")

    def lookup(self, visual_ids: Sequence[str], image_processor=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel values of `visual_ids` (float32) and the frame mask (None for single images)."""
        processor = image_processor or self.image_processor
        if processor is None:
            raise ValueError(f"{self.name}: no image processor; pass image_processor= to the store or to lookup")
        rows = rows_of(self._index, visual_ids, self.name)
        frames = [[self._open(visual_ids[i], p) for p in self._paths[row]] for i, row in enumerate(rows)]
        flat = [image for item in frames for image in item]
        pixels = processor(images=flat, return_tensors="pt")["pixel_values"].float()
        if not self._is_video:
            return pixels, None
        longest = max(len(item) for item in frames)
        batch = pixels.new_zeros((len(frames), longest, *pixels.shape[1:]))
        mask = torch.zeros((len(frames), longest), dtype=torch.long)
        start = 0
        for i, item in enumerate(frames):
            batch[i, : len(item)] = pixels[start : start + len(item)]
            mask[i, : len(item)] = 1
            start += len(item)
        return batch, mask

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def is_video(self) -> bool:
        return self._is_video

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, visual_id: object) -> bool:
        return visual_id in self._index

    def __repr__(self) -> str:
        return f"ImagePathStore({self.name!r}, {len(self)} items, video={self.is_video})"
