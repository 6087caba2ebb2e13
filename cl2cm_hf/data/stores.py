"""Opening a folder as a visual store, the one rule every reader uses: an image (or frame) store when
the folder holds ``images.json``, else a feature store."""

from __future__ import annotations

import os
from pathlib import Path

from cl2cm_hf.data.features import VisualFeatureStore
from cl2cm_hf.data.image_paths import IMAGES_FILE, ImagePathStore


def open_visual_store(folder: str | os.PathLike, **feature_options) -> VisualFeatureStore | ImagePathStore:
    """The store saved in `folder`; `feature_options` (``mmap``, ``on_bad_row``, ``skipped``) go to
    `VisualFeatureStore.load`."""
    if (Path(folder) / IMAGES_FILE).is_file():
        return ImagePathStore.load(folder)
    return VisualFeatureStore.load(folder, **feature_options)
