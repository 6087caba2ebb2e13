"""The paired bootstrap of SumR differences (cl2cm_hf.evaluation.bootstrap): the resampled statistic is
the benchmark's SumR, the pairing holds, and the interval moves with the data."""

import numpy as np
import pytest

from cl2cm_hf.evaluation.bootstrap import concat_hits, item_hits, paired_bootstrap, sumr
from cl2cm_hf.retrieval import metrics_from_ranks


def _system(rng, n, good):
    """Ranks of `n` items with one caption each; `good` is the share ranked first."""
    t2v = np.where(rng.random(n) < good, 1, rng.integers(2, 40, n))
    v2t = np.where(rng.random(n) < good, 1, rng.integers(2, 40, n))
    return t2v, v2t


def test_sumr_of_items_is_the_metric_formula_with_several_captions_per_item():
    rng = np.random.default_rng(0)
    items = np.array([0, 0, 1, 2, 2, 2, 3])  # uneven captions per item (Task 2 style queries)
    t2v, v2t = rng.integers(1, 12, items.size), rng.integers(1, 12, 4)
    assert sumr(item_hits(t2v, items, v2t)) == pytest.approx(metrics_from_ranks(t2v, v2t)["sumr"])
    # The full-sample draw (every item once) is the same statistic.
    hits = item_hits(t2v, items, v2t)
    assert sumr(hits, np.arange(4)[None])[0] == pytest.approx(sumr(hits))


def test_pooled_folds_are_the_mean_of_fold_sumr():
    rng = np.random.default_rng(1)
    folds = [_system(rng, 50, good) for good in (0.2, 0.6)]
    pooled = concat_hits([item_hits(t2v, np.arange(50), v2t) for t2v, v2t in folds])
    mean = np.mean([metrics_from_ranks(t2v, v2t)["sumr"] for t2v, v2t in folds])
    assert sumr(pooled) == pytest.approx(mean)


def test_interval_follows_the_paired_difference():
    rng = np.random.default_rng(2)
    n = 400
    base_t2v, base_v2t = _system(rng, n, 0.3)
    base = item_hits(base_t2v, np.arange(n), base_v2t)
    same = paired_bootstrap(base, base, resamples=500)
    assert same.estimate == same.low == same.high == 0  # paired: a system against itself never differs
    # Better on a random half of the items, equal elsewhere: the interval is above 0 and holds the estimate.
    better_t2v = np.where(rng.random(n) < 0.5, 1, base_t2v)
    better = item_hits(better_t2v, np.arange(n), base_v2t)
    up = paired_bootstrap(better, base, resamples=2000)
    assert 0 < up.low < up.estimate < up.high
    down = paired_bootstrap(base, better, resamples=2000)
    assert down.estimate == pytest.approx(-up.estimate) and down.high < 0
    # Two unrelated systems of the same quality: the interval holds 0.
    other_t2v, other_v2t = _system(rng, n, 0.3)
    noise = paired_bootstrap(item_hits(other_t2v, np.arange(n), other_v2t), base, resamples=2000)
    assert noise.low < 0 < noise.high
    # Unpaired resampling would be wider; the paired interval of a small shift stays narrow.
    assert up.high - up.low < noise.high - noise.low


def test_strata_keep_each_fold_in_every_resample():
    rng = np.random.default_rng(3)
    a_t2v, a_v2t = _system(rng, 100, 0.5)
    b_t2v, b_v2t = _system(rng, 100, 0.5)
    a, b = item_hits(a_t2v, np.arange(100), a_v2t), item_hits(b_t2v, np.arange(100), b_v2t)
    folds = np.repeat([0, 1], 50)
    one = paired_bootstrap(a, b, strata=folds, resamples=300, seed=5)
    assert one == paired_bootstrap(a, b, strata=folds, resamples=300, seed=5)  # seeded: reproducible
    assert one.low <= one.estimate <= one.high
    with pytest.raises(ValueError, match="strata"):
        paired_bootstrap(a, b, strata=folds[:10])


def test_mismatched_systems_and_items_without_captions_are_refused():
    hits = item_hits([1, 2], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(hits, item_hits([1, 2, 3], [0, 1, 2], [1, 1, 1]))
    with pytest.raises(ValueError, match="no caption"):
        item_hits([1, 2], [0, 0], [1, 1])
