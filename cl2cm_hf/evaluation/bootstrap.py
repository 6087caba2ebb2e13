"""Paired bootstrap of a SumR difference between two systems evaluated on the same test queries.

SumR needs both directions, but only text-to-visual has one rank per query; visual-to-text has one
rank per visual item (its best caption among all captions). The resampling unit is therefore the
**visual item** with everything that belongs to it: the t2v ranks of its captions and its own v2t
rank. With one caption per item and language (Multi30K Task 1 queries) an item is a query. A
resample draws items with replacement (the same draw for both systems, which keeps the pairing) and
recomputes SumR from the drawn items: t2v recall = hits of the drawn items' captions over their
number of captions, v2t recall = hits over drawn items. Ranks are not recomputed within a resample
(each was ranked against the full gallery), so the interval covers which queries were sampled, not
the training run's randomness. With `strata` (e.g. the cross-validation fold of each item) each
stratum is resampled on its own, so every resample keeps each fold's size: the pooled SumR is then
always the mean of the folds' SumR, as the point estimate is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval.metrics import RECALL_KS, check_ranks

_CHUNK = 1000


class ItemHits(NamedTuple):
    """Per visual item: ``t2v_hits`` (sum over K in `RECALL_KS` of its captions ranked within K),
    ``captions`` (its number of captions) and ``v2t_hits`` (number of K with its v2t rank within K)."""

    t2v_hits: np.ndarray
    captions: np.ndarray
    v2t_hits: np.ndarray


class Interval(NamedTuple):
    """A difference (the full-sample value) and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    resamples: int


def item_hits(t2v_ranks, text_to_item, v2t_ranks) -> ItemHits:
    """`ItemHits` of items ``0..len(v2t_ranks)-1``: `t2v_ranks[i]` is caption i's rank,
    `text_to_item[i]` its item, `v2t_ranks[j]` item j's rank. Every item needs a caption."""
    t2v = check_ranks(t2v_ranks, "t2v ranks")
    v2t = check_ranks(v2t_ranks, "v2t ranks")
    items = np.asarray(text_to_item, dtype=np.int64)
    if items.shape != t2v.shape or items.min() < 0 or items.max() >= v2t.size:
        raise CL2CMError(f"text_to_item: expected {t2v.size} item indices in 0..{v2t.size - 1}")
    captions = np.bincount(items, minlength=v2t.size)
    if not captions.all():
        raise CL2CMError(f"items {np.flatnonzero(captions == 0)[:5].tolist()} have no caption: every item needs a v2t rank")
    per_caption = sum((t2v <= k).astype(np.int64) for k in RECALL_KS)
    v2t_hits = sum((v2t <= k).astype(np.int64) for k in RECALL_KS)
    return ItemHits(np.bincount(items, weights=per_caption, minlength=v2t.size), captions, v2t_hits)


def concat_hits(parts: list[ItemHits]) -> ItemHits:
    """The items of several galleries (e.g. the folds) side by side."""
    return ItemHits(*(np.concatenate([getattr(p, field) for p in parts]) for field in ItemHits._fields))


def sumr(hits: ItemHits, draws: np.ndarray | None = None) -> np.ndarray | float:
    """SumR of the items (``draws``: ``(resamples, n)`` item indices, one SumR per row)."""
    if draws is None:
        return float(100 * (hits.t2v_hits.sum() / hits.captions.sum() + hits.v2t_hits.sum() / hits.v2t_hits.size))
    t2v = hits.t2v_hits[draws].sum(axis=1) / hits.captions[draws].sum(axis=1)
    return 100 * (t2v + hits.v2t_hits[draws].mean(axis=1))


def paired_bootstrap(a: ItemHits, b: ItemHits, strata=None, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """SumR(a) - SumR(b) on the same items, with a `level` percentile interval over `resamples`
    paired resamples of items (within each stratum when `strata` gives one label per item)."""
    n = a.v2t_hits.size
    if b.v2t_hits.size != n or not np.array_equal(a.captions, b.captions):
        raise CL2CMError(f"paired systems need the same items and captions: {n} vs {b.v2t_hits.size} items")
    labels = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    if labels.shape != (n,):
        raise CL2CMError(f"strata: expected one label per item ({n}), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    differences = []
    for start in range(0, resamples, _CHUNK):  # bounded memory: _CHUNK x n indices at a time
        rows = min(_CHUNK, resamples - start)
        draws = np.concatenate([members[rng.integers(0, members.size, (rows, members.size))] for members in groups], axis=1)
        differences.append(sumr(a, draws) - sumr(b, draws))
    differences = np.concatenate(differences)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return Interval(sumr(a) - sumr(b), float(low), float(high), resamples)
