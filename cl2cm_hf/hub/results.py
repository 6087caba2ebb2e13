"""Metric records as the Hub shows them: the one markdown table, ``model-index`` entries, the plot.

`metrics_table` is the only table writer of the project: the run's ``test_results.md`` and console
summary, the leaderboard's ``.md`` and the card's results table all call it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from huggingface_hub import EvalResult

from cl2cm_hf.atomic import atomic_write_bytes
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.records import METRICS, MetricRecord
from cl2cm_hf.retrieval import DIRECTIONS, METRIC_KEYS, recall_at_k

MODALITIES = ("image", "video")
_LABELS = {"medr": "MedR", "mnr": "MnR", "sumr": "SumR"}
_METRIC_TYPES = {"medr": "median_rank", "mnr": "mean_rank", "sumr": "sum_of_recalls"}
NO_RESULTS = "_No evaluation results recorded yet._"


def _label(metric: str) -> str:
    return _LABELS.get(metric) or f"R@{metric[1:]}"


def _column(key: str) -> str:
    direction, _, metric = key.rpartition("_")
    return f"{direction.upper()} {_label(metric)}" if direction else _label(metric)


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if metric == "medr" else f"{value:.1f}"


def metrics_table(records: Iterable[MetricRecord]) -> str:
    """Markdown table of `records`: one line per (model, dataset, split, language) in order of first
    appearance, one column per metric key (``METRIC_KEYS`` order); a Model column when the records
    name models. A later record of the same cell replaces an earlier one."""
    lines: dict[tuple, dict[str, float]] = {}
    for record in records:
        lines.setdefault((record.model, record.dataset, record.split, record.lang), {})[record.key] = record.value
    if not lines:
        return NO_RESULTS
    with_model = any(model is not None for model, *_ in lines)
    head = (["Model"] if with_model else []) + ["Dataset", "Split", "Lang"]
    out = ["| " + " | ".join(head + [_column(key) for key in METRIC_KEYS]) + " |",
           "|" + "---|" * len(head) + "---:|" * len(METRIC_KEYS)]
    for (model, dataset, split, lang), values in lines.items():
        cells = ([model or "-"] if with_model else []) + [dataset, split or "-", lang]
        cells += [_cell(key.rpartition("_")[2], values.get(key)) for key in METRIC_KEYS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# model-index entries
# --------------------------------------------------------------------------------------------


def _task(direction: str | None, modality: str | None) -> tuple[str, str]:
    noun = modality or "visual"
    if direction == "t2v":
        return f"text-to-{noun}-retrieval", f"Text-to-{noun.capitalize()} Retrieval"
    if direction == "v2t":
        return f"{noun}-to-text-retrieval", f"{noun.capitalize()}-to-Text Retrieval"
    return f"{noun}-text-retrieval", f"{noun.capitalize()}-Text Retrieval"


def _check_modality(modality: str | None) -> None:
    if modality is not None and modality not in MODALITIES:
        raise CL2CMError(f"visual_modality must be one of {MODALITIES} or None, got {modality!r}")


def eval_result(record: MetricRecord, visual_modality: str | None) -> EvalResult:
    """The ``model-index`` entry of `record`: the task type names direction and modality
    (``text-to-image-retrieval``, ``image-to-text-retrieval``, ``image-text-retrieval`` for SumR;
    ``visual`` when the modality is not known), the dataset config is the query language and the
    metric type ``recall@K``, ``median_rank``, ``mean_rank`` or ``sum_of_recalls``."""
    _check_modality(visual_modality)
    task_type, task_name = _task(record.direction, visual_modality)
    label = _label(record.metric)
    return EvalResult(
        task_type=task_type,
        task_name=task_name,
        dataset_type=record.dataset,
        dataset_name=record.dataset,
        dataset_config=record.lang,
        dataset_split=record.split,
        metric_type=_METRIC_TYPES.get(record.metric) or f"recall@{record.metric[1:]}",
        metric_value=float(record.value),
        metric_name=f"{record.direction.upper()} {label} ({record.lang})" if record.direction else f"{label} ({record.lang})",
    )


def eval_results(records: Iterable[MetricRecord], visual_modality: str | None) -> list[EvalResult]:
    """`eval_result` of each record; a later record with the same key replaces an earlier one."""
    merged = {result_key(r): r for r in (eval_result(record, visual_modality) for record in records)}
    return list(merged.values())


def result_key(result: EvalResult) -> tuple:
    """What makes two ``model-index`` entries the same result (one replaces the other)."""
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type)


def record_of(result: EvalResult) -> MetricRecord | None:
    """The record of a CL2CM ``model-index`` entry (`eval_result` inverted); None for an entry of
    another kind (added by hand), which stays in the card but not in its table."""
    metric = {v: k for k, v in _METRIC_TYPES.items()}.get(result.metric_type)
    if metric is None and result.metric_type.startswith("recall@"):
        metric = "r" + result.metric_type.split("@", 1)[1]
    if metric not in METRICS or not result.task_type.endswith("retrieval"):
        return None
    direction = "t2v" if result.task_type.startswith("text-to-") else "v2t" if "-to-text-" in result.task_type else None
    try:
        return MetricRecord(result.dataset_type, result.dataset_split, result.dataset_config or "-", direction, metric,
                            float(result.metric_value))
    except (TypeError, ValueError):
        return None


def modality_of(results: Iterable[EvalResult]) -> str | None:
    """The visual modality the entries' task types name (`eval_result` wrote them), if any."""
    for result in results:
        for modality in MODALITIES:
            if result.task_type in {_task(d, modality)[0] for d in (*DIRECTIONS, None)}:
                return modality
    return None


# --------------------------------------------------------------------------------------------
# Recall@K plot
# --------------------------------------------------------------------------------------------


def _rank_curves(ranks: Mapping) -> list[tuple[str, object]]:
    """(label, ranks) pairs from ``{lang: RetrievalRanks | {"t2v": r, "v2t": r}}``."""
    curves = []
    for lang, value in ranks.items():
        if isinstance(value, Mapping):
            curves += [(f"{lang} {direction}", value[direction]) for direction in DIRECTIONS if direction in value]
        else:
            curves += [(f"{lang} {direction}", getattr(value, direction)) for direction in DIRECTIONS]
    return curves


def plot_recall_at_k(path: str | Path, records: Iterable[MetricRecord] = (), ranks: Mapping | None = None,
                     max_k: int = 10) -> bool:
    """Draw recall@K curves to `path` (PNG, written atomically): from per-query `ranks` (K=1..max_k)
    when given, else from the R@K `records`. Returns False (nothing written) with no data."""
    series: list[tuple[str, list[int], list[float]]] = []
    if ranks:
        ks = list(range(1, max_k + 1))
        series = [(label, ks, [recall_at_k(r, k) for k in ks]) for label, r in _rank_curves(ranks)]
    else:
        points: dict[str, dict[int, float]] = {}
        for record in records:
            if record.direction is not None and record.metric[0] == "r" and record.metric[1:].isdigit():
                label = f"{record.dataset} {record.lang} {record.direction}"
                points.setdefault(label, {})[int(record.metric[1:])] = record.value
        series = [(label, sorted(p), [p[k] for k in sorted(p)]) for label, p in sorted(points.items())]
    if not series:
        return False

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no pyplot, no GUI backend, thread-safe
    ax = fig.add_subplot()
    for label, ks, values in series:
        style = "-" if label.endswith("t2v") else "--"
        ax.plot(ks, values, style, marker="o", markersize=3, label=label)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted({k for _, ks, _ in series for k in ks}))
    ax.grid(True, alpha=0.3)
    ax.set_title("Recall@K per language and direction (t2v solid, v2t dashed)", fontsize=9)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return True


__all__ = ["MODALITIES", "eval_result", "eval_results", "metrics_table", "modality_of", "plot_recall_at_k", "record_of",
           "result_key"]
