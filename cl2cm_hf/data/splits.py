"""Splitting by visual item (no item in two splits) and the bundle a training run consumes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from cl2cm_hf.errors import CL2CMError


@dataclass
class RetrievalData:
    """What a run needs: pairs (train[/validation]/test), queries (validation/test) and the visual store."""

    pairs: DatasetDict
    queries: DatasetDict
    features: object  # VisualFeatureStore or ImagePathStore


def select_visual(dataset: Dataset, visual_ids: Iterable[str]) -> Dataset:
    """Rows of `dataset` whose ``visual_id`` is in `visual_ids` (order kept; an index view, no copy)."""
    column = dataset.with_format("arrow")["visual_id"]
    inside = pc.is_in(column, value_set=pa.array(sorted(set(visual_ids)), type=pa.string()))
    return dataset.select(np.flatnonzero(inside.to_numpy(zero_copy_only=False)))


def kfold_visual_ids(visual_ids: Sequence[str], num_folds: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``(train_ids, test_ids)`` per fold: a seeded permutation cut into `num_folds` near-equal test parts."""
    if not 2 <= num_folds <= len(visual_ids):
        raise CL2CMError(f"num_folds={num_folds} must be between 2 and the number of items ({len(visual_ids)})")
    order = np.random.default_rng(seed).permutation(len(visual_ids))
    parts = np.array_split(order, num_folds)
    folds = []
    for k in range(num_folds):
        test = set(parts[k].tolist())
        folds.append(([visual_ids[i] for i in order if i not in test], [visual_ids[i] for i in parts[k]]))
    return folds
