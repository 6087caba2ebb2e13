"""retrieval_recall: R@K, MedR, MnR and SumR of cross-modal retrieval, computed from per-query ranks.

This file is the single implementation of the metric formula of cl2cm-hf. It is used two ways:

* as an `evaluate` module: ``evaluate.load("/abs/path/to/cl2cm_hf/metrics/retrieval_recall")``
  (evaluate copies this file into its cache, so it imports nothing from ``cl2cm_hf``);
* as a plain formula: ``cl2cm_hf.retrieval`` loads this file by path under the module name
  ``cl2cm_hf._retrieval_recall_formula``; under that name the `evaluate` wrapper below is not
  defined, so the formula costs neither an ``evaluate`` nor a ``datasets`` import.

Keep one import per line: evaluate's import checker misreads comma-separated import lines.
"""

import numpy as np

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
FORMULA_MODULE_NAME = "cl2cm_hf._retrieval_recall_formula"


def check_ranks(ranks, name="ranks"):
    """Return `ranks` as a 1-D int64 array, or raise ValueError: ranks are 1-based integers."""
    array = np.asarray(ranks)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of ranks, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: at least one query is needed")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer ranks, got non-integer values")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer ranks, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 1:
        raise ValueError(f"{name} are 1-based (the best rank is 1), got a minimum of {int(array.min())}")
    return array


def recall_at_k(ranks, k):
    """Percentage (0-100) of queries whose correct item ranks within the top `k`."""
    ranks = check_ranks(ranks)
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
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
    """All retrieval metrics from the 1-based ranks of both directions.

    Recalls are percentages (0-100); ``sumr`` is the sum of the six recalls (at most 600).
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
        raise ValueError(f"{ranks.shape[0]} ranks but {labels.shape[0]} directions")
    unknown = sorted({str(label) for label in labels.tolist()} - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {unknown}")
    parts = {name: ranks[labels == name] for name in DIRECTIONS}
    missing = [name for name, part in parts.items() if part.size == 0]
    if missing:
        raise ValueError(f"no ranks for direction(s) {missing}: pass the ranks of both directions")
    return metrics_from_ranks(parts["t2v"], parts["v2t"])


_DESCRIPTION = """
Cross-modal retrieval metrics from per-query ranks: text-to-visual (t2v) and visual-to-text
(v2t) Recall@1/5/10 in percent, median rank (MedR) and mean rank (MnR), and SumR, the sum of
the six recalls (at most 600). Each input row is the 1-based rank of one query's correct item and
the direction of that query; ranks of both directions go into one compute call. With several
captions per visual item, the v2t rank of an item is the rank of its best-ranked correct caption
(NRCCR's protocol). The module receives ranks, never similarity matrices: compute them in
chunks (cl2cm_hf.retrieval.ranks).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): 1-based rank of the correct item, one per query.
    direction (`list` of `str`): "t2v" (a caption querying visual items) or "v2t" (a visual
        item querying captions), one per query; both directions must be present.
Returns:
    dict with t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_mnr, v2t_r1, v2t_r5, v2t_r10, v2t_medr,
    v2t_mnr (recalls in percent, MedR = floor of the median rank) and sumr.
Examples:
    >>> metric = evaluate.load("path/to/cl2cm_hf/metrics/retrieval_recall")
    >>> metric.compute(predictions=[1, 3, 12, 1], direction=["t2v", "t2v", "v2t", "v2t"])["t2v_r1"]
    50.0
    >>> results = metric.compute(**metric.inputs_from_ranks([1, 3], [12, 1]))
"""

_CITATION = """
@inproceedings{wang2024cl2cm,
  title     = {CL2CM: Improving Cross-Lingual Cross-Modal Retrieval via Cross-Lingual Knowledge Transfer},
  author    = {Wang, Yabing and Wang, Fan and Dong, Jianfeng and Luo, Hao},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024}
}
"""


if __name__ != FORMULA_MODULE_NAME:
    # The evaluate wrapper; skipped when cl2cm_hf.retrieval loads this file for the formula only.
    import datasets
    import evaluate

    class RetrievalRecall(evaluate.Metric):
        """R@K / MedR / MnR / SumR of cross-modal retrieval from per-query ranks."""

        inputs_from_ranks = staticmethod(inputs_from_ranks)

        def _info(self):
            return evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "direction": datasets.Value("string")}
                ),
                reference_urls=["https://arxiv.org/abs/2312.08984"],
            )

        def _compute(self, predictions, direction):
            return metrics_from_long_format(predictions, direction)
