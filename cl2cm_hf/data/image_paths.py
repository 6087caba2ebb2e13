"""Images on disk looked up by visual id, for the backbone mode (a vision tower on pixel values).

An item is one image file, or (video) a list of frame files or one video file (`VIDEO_SUFFIXES`).
``lookup`` opens images with PIL and runs a transformers image processor
(`cl2cm_hf.processing_cl2cm.pixel_inputs`, as the checkpoints' processors do): ``(pixel_values
(B, 3, H, W), None)`` for images, ``(pixel_values (B, T, 3, H, W), mask (B, T))`` for frame lists;
video files are decoded and sampled by a video processor (`CL2CMVideoProcessor`), with the same result.

On disk (``save``/``load``): a folder with ``images.json`` (``{"items": {visual_id: file or
[frame files]}}``, paths relative to the folder) and the image files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cl2cm_hf.atomic import atomic_write_text
from cl2cm_hf.data.features import index_ids, read_id_list, rows_of
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.processing_cl2cm import pixel_inputs

IMAGES_FILE = "images.json"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


def to_rgb(image):
    """RGB, with 16/32-bit greyscale scaled to 8 bits (``convert("RGB")`` would clip it at 255)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(array, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")  # L, LA, P, RGBA, CMYK, YCbCr, 1


class ImagePathStore:
    """Visual id -> image path(s); same lookup contract as `VisualFeatureStore`."""

    output_key = "pixel_values"  # batch key the collators use

    def __init__(
        self, paths: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], image_processor=None, name: str | None = None,
        video_processor=None,
    ):
        self.name = name or f"image path store ({len(paths)} items)"
        self._ids, self._index = index_ids(paths.keys(), self.name)
        kinds = {isinstance(p, (str, os.PathLike)) for p in paths.values()}
        if len(kinds) > 1:
            raise CL2CMError(f"{self.name}: mixes single images and frame lists; use one kind for all items")
        self._is_video = kinds == {False}
        self._paths = [[Path(p)] if not self._is_video else [Path(f) for f in p] for p in paths.values()]
        for visual_id, frames in zip(self._ids, self._paths):
            if not frames:
                raise CL2CMError(f"{self.name}: visual_id {visual_id!r} has no frame files")
        files = {frames[0].suffix.lower() in VIDEO_SUFFIXES for frames in self._paths} if not self._is_video else {False}
        if len(files) > 1:
            raise CL2CMError(f"{self.name}: mixes video files ({', '.join(VIDEO_SUFFIXES)}) and images; use one kind for all items")
        self._video_files = files == {True}
        self.image_processor = image_processor
        self.video_processor = video_processor

    @classmethod
    def from_split_file(
        cls, ids: Sequence[str] | str | os.PathLike, image_root: str | os.PathLike, image_processor=None
    ) -> ImagePathStore:
        """Items named by file (e.g. a Multi30K image split, ids = file names) under `image_root`."""
        root = Path(image_root)
        return cls({i: root / i for i in read_id_list(ids)}, image_processor, name=f"image path store {root}")

    @classmethod
    def load(cls, folder: str | os.PathLike, image_processor=None) -> ImagePathStore:
        """A store saved by `save`."""
        folder = Path(folder)
        index = folder / IMAGES_FILE
        if not index.is_file():
            raise FileNotFoundError(f"{index}: missing; an image store folder holds {IMAGES_FILE} and the image files")
        items = json.loads(index.read_text(encoding="utf-8")).get("items")
        if not isinstance(items, dict):
            raise CL2CMError(f"{index}: expected {{\"items\": {{visual_id: file or [frame files]}}}}")
        paths = {i: folder / p if isinstance(p, str) else [folder / f for f in p] for i, p in items.items()}
        return cls(paths, image_processor, name=f"image store {folder}")

    def save(self, folder: str | os.PathLike, visual_ids: Sequence[str] | None = None) -> Path:
        """Copy the files of `visual_ids` (default: all) into `folder` with an ``images.json`` that
        `load` reads; returns the folder."""
        folder = Path(folder)
        (folder / "files").mkdir(parents=True, exist_ok=True)
        items = {}
        for n, visual_id in enumerate(self.ids if visual_ids is None else visual_ids):
            copied = []
            for k, path in enumerate(self.paths(visual_id)):
                name = f"files/{n:06d}_{k:03d}{path.suffix}"
                shutil.copyfile(path, folder / name)
                copied.append(name)
            items[visual_id] = copied if self._is_video else copied[0]
        atomic_write_text(folder / IMAGES_FILE, json.dumps({"items": items}, ensure_ascii=False))
        return folder

    def paths(self, visual_id: str) -> list[Path]:
        return list(self._paths[rows_of(self._index, [visual_id], self.name)[0]])

    def _open(self, visual_id: str, path: Path):
        from PIL import Image

        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: image of visual_id {visual_id!r} not found: {path}")
        with Image.open(path) as image:
            return to_rgb(image)

    def lookup(self, visual_ids: Sequence[str], image_processor=None, video_processor=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel values of `visual_ids` (float32) and the frame mask (None for single images), made
        by `image_processor` (a transformers image processor), else by the store's own; video files
        by `video_processor`, else the store's own."""
        if self._video_files:
            return self._decode_videos(visual_ids, video_processor or self.video_processor)
        processor = image_processor or self.image_processor
        if processor is None:
            raise CL2CMError(f"{self.name}: no image processor; pass image_processor= to the store or to lookup")
        rows = rows_of(self._index, visual_ids, self.name)
        frames = [[self._open(visual_ids[i], p) for p in self._paths[row]] for i, row in enumerate(rows)]
        if not self._is_video:
            return pixel_inputs(processor, images=[item[0] for item in frames])["pixel_values"], None
        inputs = pixel_inputs(processor, videos=frames)
        return inputs["pixel_values"], inputs["visual_mask"]

    def _decode_videos(self, visual_ids: Sequence[str], processor) -> tuple[torch.Tensor, torch.Tensor]:
        if processor is None:
            raise CL2CMError(f"{self.name}: holds video files and has no video processor; pass video_processor= to the store or to lookup")
        rows = rows_of(self._index, visual_ids, self.name)
        inputs = processor(videos=[str(self._paths[row][0]) for row in rows], return_tensors="pt")
        return inputs["pixel_values"], inputs["visual_mask"]

    @property
    def feature_dim(self) -> None:
        """None: the items are pixels, and the vision backbone decides the width."""
        return None

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def is_video(self) -> bool:
        return self._is_video or self._video_files

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, visual_id: object) -> bool:
        return visual_id in self._index

    def __repr__(self) -> str:
        return f"ImagePathStore({self.name!r}, {len(self)} items, video={self.is_video})"
