"""retrieval_recall: R@K, MedR, MnR and SumR of cross-modal retrieval, as an `evaluate` module.

``evaluate.load("/abs/path/to/cl2cm_hf/metrics/retrieval_recall")`` (``METRIC_MODULE_PATH``) works
offline. The formula is not here: it is imported from `cl2cm_hf.retrieval.metrics`, its one
definition, so cl2cm_hf must be installed; this file only describes the inputs and outputs.

Keep one import per line: evaluate's import checker misreads comma-separated import lines.
"""

import datasets
import evaluate
from cl2cm_hf.retrieval.metrics import inputs_from_ranks
from cl2cm_hf.retrieval.metrics import metrics_from_long_format

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


class RetrievalRecall(evaluate.Metric):
    """R@K / MedR / MnR / SumR of cross-modal retrieval from per-query ranks."""

    inputs_from_ranks = staticmethod(inputs_from_ranks)

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "direction": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2312.08984"],
        )

    def _compute(self, predictions, direction):
        return metrics_from_long_format(predictions, direction)
