"""The retrieval metric formula: R@K, MedR, MnR and SumR from per-query 1-based ranks.

This module is the one definition of the formula and of the metric key list. Everything that
reports retrieval metrics imports it: `cl2cm_hf.retrieval.retrieval_metrics`, and the `evaluate`
module in ``cl2cm_hf/metrics/retrieval_recall`` (``METRIC_MODULE_PATH``), which only wraps it. It
needs numpy alone: ranks may be lists, numpy arrays or tensors (converted without importing torch).
"""

from pathlib import Path

import numpy as np

from cl2cm_hf.errors import CL2CMError

RECALL_KS = (1, 5, 10)
DIRECTIONS = ("t2v", "v2t")
METRIC_KEYS = (
    "t2v_r1",
    "t2v_r5",
    "t2v_r10",
    "t2v_medr",
    "t2v_mnr",
    "v2t_r1",
    "v2t_r5",
    "v2t_r10",
    "v2t_medr",
    "v2t_mnr",
    "sumr",
)
"""Every metric key, in table order (``t2v_r1 .. v2t_mnr, sumr``): the one list of them."""

METRIC_MODULE_PATH = str(Path(__file__).resolve().parent.parent / "metrics" / "retrieval_recall")
"""Directory of the `evaluate` module: ``evaluate.load(METRIC_MODULE_PATH)`` works offline."""


def check_ranks(ranks, name="ranks"):
    """Return `ranks` as a 1-D int64 array, or raise ValueError: ranks are 1-based integers."""
    if hasattr(ranks, "detach"):  # a torch tensor, possibly on an accelerator or requiring grad
        ranks = ranks.detach().cpu().numpy()
    array = np.asarray(ranks)
    if array.ndim != 1:
        raise CL2CMError(f"{name} must be a 1-D sequence of ranks, got shape {array.shape}")
    if array.size == 0:
        raise CL2CMError(f"{name} is empty: at least one query is needed")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise CL2CMError(f"{name} must hold integer ranks, got non-integer values")
    elif array.dtype.kind not in "iu":
        raise CL2CMError(f"{name} must hold integer ranks, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 1:
        raise CL2CMError(f"{name} are 1-based (the best rank is 1), got a minimum of {int(array.min())}")
    return array


def recall_at_k(ranks, k):
    """Percentage (0-100) of queries whose correct item ranks within the top `k`."""
    ranks = check_ranks(ranks)
    if int(k) < 1:
        raise CL2CMError(f"k must be >= 1, got {k}")
    return float(100.0 * np.count_nonzero(ranks <= int(k)) / ranks.size)


def median_rank(ranks):
    """MedR: the floor of the median 1-based rank (NRCCR's / VSE++'s convention,
    ``floor(median(0-based ranks)) + 1``); equal to the median whenever that is an integer."""
    return float(np.floor(np.median(check_ranks(ranks))))


def mean_rank(ranks):
    """MnR: the mean 1-based rank."""
    return float(np.mean(check_ranks(ranks)))


def direction_metrics(ranks, prefix):
    """``{prefix}_r1, _r5, _r10, _medr, _mnr`` of one direction."""
    ranks = check_ranks(ranks, f"{prefix} ranks")
    out = {f"{prefix}_r{k}": recall_at_k(ranks, k) for k in RECALL_KS}
    out[f"{prefix}_medr"] = median_rank(ranks)
    out[f"{prefix}_mnr"] = mean_rank(ranks)
    return out


def metrics_from_ranks(t2v_ranks, v2t_ranks):
    """``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_mnr, v2t_r1, ..., v2t_mnr, sumr`` from 1-based ranks.

    Recalls are percentages (0-100), MedR is the floor of the median rank (NRCCR's convention),
    MnR the mean rank, SumR the sum of the six recalls (at most 600).
    """
    out = direction_metrics(t2v_ranks, "t2v")
    out.update(direction_metrics(v2t_ranks, "v2t"))
    out["sumr"] = float(sum(out[f"{d}_r{k}"] for d in DIRECTIONS for k in RECALL_KS))
    return {key: out[key] for key in METRIC_KEYS}


def inputs_from_ranks(t2v_ranks, v2t_ranks):
    """The long-format inputs of the `evaluate` module for ranks of both directions:
    ``metric.compute(**inputs_from_ranks(t2v, v2t))``."""
    t2v = check_ranks(t2v_ranks, "t2v ranks")
    v2t = check_ranks(v2t_ranks, "v2t ranks")
    return {
        "predictions": np.concatenate([t2v, v2t]).tolist(),
        "direction": ["t2v"] * t2v.size + ["v2t"] * v2t.size,
    }


def metrics_from_long_format(predictions, direction):
    """Metrics from one rank per query (`predictions`) and its direction (``"t2v"``/``"v2t"``)."""
    ranks = np.asarray(predictions)
    labels = np.asarray(direction, dtype=object)
    if ranks.shape[0] != labels.shape[0]:
        raise CL2CMError(f"{ranks.shape[0]} ranks but {labels.shape[0]} directions")
    unknown = sorted({str(label) for label in labels.tolist()} - set(DIRECTIONS))
    if unknown:
        raise CL2CMError(f"direction must be one of {list(DIRECTIONS)}, got {unknown}")
    parts = {name: ranks[labels == name] for name in DIRECTIONS}
    missing = [name for name, part in parts.items() if part.size == 0]
    if missing:
        raise CL2CMError(f"no ranks for direction(s) {missing}: pass the ranks of both directions")
    return metrics_from_ranks(parts["t2v"], parts["v2t"])
