"""Retrieval results as records: one value of one metric, direction, language, split and dataset.

The evaluators return `MetricRecord`s; ``test_results.json``, the leaderboard files, the card's
table and its ``model-index`` are all written from them (`cl2cm_hf.hub.results`). The metric names
come from the metric formula (`cl2cm_hf.retrieval.METRIC_KEYS`): ``t2v_r1`` is direction ``t2v``,
metric ``r1``; ``sumr`` has no direction.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from cl2cm_hf.atomic import atomic_write_text
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval import DIRECTIONS, METRIC_KEYS

logger = logging.getLogger(__name__)

TEST_RESULTS = "test_results.json"  # a run's test records, in its final folder
FIELDS = ("dataset", "split", "lang", "direction", "metric", "value")
METRICS: tuple[str, ...] = tuple(dict.fromkeys(key.split("_", 1)[-1] for key in METRIC_KEYS))
"""Metric names without direction, in table order (``r1, r5, r10, medr, mnr, sumr``)."""


def _split_key(key: str) -> tuple[str | None, str]:
    direction, _, metric = key.partition("_")
    return (direction, metric) if metric else (None, key)


@dataclass(frozen=True)
class MetricRecord:
    """One metric value. `direction` is ``t2v``/``v2t`` (None for ``sumr``, the sum of both
    directions' recalls); `model` names the checkpoint in leaderboards (None elsewhere)."""

    dataset: str
    split: str | None
    lang: str
    direction: str | None
    metric: str
    value: float
    model: str | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise CL2CMError(f"metric record {self._fields()}: unknown retrieval metric {self.metric!r}; expected one of {METRICS}")
        if self.key not in METRIC_KEYS:
            if self.direction is None:
                problem = f"{self.metric!r} needs a direction, one of {DIRECTIONS}"
            elif self.direction not in DIRECTIONS:
                problem = f"direction must be one of {DIRECTIONS} (None for sumr), got {self.direction!r}"
            else:
                problem = f"{self.metric!r} has no direction (None), got {self.direction!r}"
            raise CL2CMError(f"metric record {self._fields()}: {problem}")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise CL2CMError(f"metric record {self._fields()}: value must be a finite number, got a non-finite or non-numeric {self.value!r}")

    def _fields(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    @property
    def key(self) -> str:
        """The metric key of the formula (``t2v_r1``, ``sumr``)."""
        return self.metric if self.direction is None else f"{self.direction}_{self.metric}"

    def to_json(self) -> dict:
        row = asdict(self)
        if row["model"] is None:
            del row["model"]
        return row

    @classmethod
    def from_json(cls, row: Mapping) -> MetricRecord:
        """A record from a JSON row (`to_json`, or a leaderboard row with ``model``)."""
        missing = [k for k in ("dataset", "lang", "metric", "value") if row.get(k) is None]
        if missing:
            raise CL2CMError(f"metric row {dict(row)} lacks {missing}")
        unknown = sorted(set(row) - set(FIELDS) - {"model"})
        if unknown:
            raise CL2CMError(f"metric row {dict(row)} has unknown fields {unknown}; expected {FIELDS} and model")
        return cls(dataset=str(row["dataset"]), split=row.get("split"), lang=str(row["lang"]),
                   direction=row.get("direction"), metric=str(row["metric"]), value=float(row["value"]), model=row.get("model"))


def records_from_metrics(metrics: Mapping[str, float], *, dataset: str, split: str | None, lang: str,
                         model: str | None = None) -> list[MetricRecord]:
    """The records of one language's metrics dict (``t2v_r1 ... sumr``: `retrieval_metrics`,
    `metrics_from_ranks` or the ``retrieval_recall`` evaluate module), in `METRIC_KEYS` order."""
    missing = [key for key in METRIC_KEYS if key not in metrics]
    if missing:
        raise CL2CMError(f"{dataset} {lang}: metrics lack {missing}; expected every key of {METRIC_KEYS}")
    return [MetricRecord(dataset, split, lang, *_split_key(key), float(metrics[key]), model) for key in METRIC_KEYS]


def selection_score(records: Iterable[MetricRecord]) -> float:
    """Mean SumR over the records' languages: the score that picks the best checkpoint (`eval_sumr`)."""
    sumrs = [record.value for record in records if record.metric == "sumr"]
    if not sumrs:
        raise CL2CMError("no sumr record to select a checkpoint by")
    return sum(sumrs) / len(sumrs)


def flat_metrics(records: Iterable[MetricRecord]) -> dict[str, float]:
    """``{"<lang>_<key>": value, ..., "sumr": selection_score}``: scalars for Trainer logs (prefixed
    ``eval_`` there; ``eval_sumr`` is the best-model metric)."""
    records = list(records)
    flat = {f"{record.lang}_{record.key}": record.value for record in records}
    flat["sumr"] = selection_score(records)
    return flat


def save_records(records: Iterable[MetricRecord], path: str | Path) -> None:
    """Write `records` as a JSON list of rows (atomically)."""
    atomic_write_text(path, json.dumps([record.to_json() for record in records], indent=2) + "\n")


def _migrate_flat(flat: Mapping, *, dataset: str, split: str | None, source: str) -> list[MetricRecord]:
    """Records from the flat format written before records (``{"de_t2v_r1": ..., "de_sumr": ...,
    "sumr": <mean>}``). A language is a prefix with every metric key; anything else (the mean
    ``sumr``) is derived, not stored, and left out."""
    langs = [name[: -len("_sumr")] for name in flat if name.endswith("_sumr")]
    langs = [lang for lang in langs if all(f"{lang}_{key}" in flat for key in METRIC_KEYS)]
    if not langs:
        raise CL2CMError(f"{source}: neither a list of metric rows nor flat '<lang>_<metric>' keys ({sorted(flat)[:5]} ...)")
    records = [r for lang in langs
               for r in records_from_metrics({k: flat[f"{lang}_{k}"] for k in METRIC_KEYS}, dataset=dataset, split=split, lang=lang)]
    logger.warning(
        "%s is in the old flat format ('<lang>_t2v_r1': value); read as %d metric records of %s (dataset %r, split %r). "
        "Rewrite it in the current format with cl2cm_hf.evaluation.records.save_records(load_records(path), path).",
        source, len(records), ", ".join(langs), dataset, split,
    )
    return records


def load_records(path: str | Path, *, dataset: str = "unknown", split: str | None = "test") -> list[MetricRecord]:
    """Records from a JSON file of `save_records` (a list of rows) or a leaderboard file
    (``{"rows": [...]}``). A ``test_results.json`` of the old flat format is migrated with a
    warning; it names neither dataset nor split, so `dataset` and `split` fill them in."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CL2CMError(f"{path}: not valid JSON ({err})") from err
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if isinstance(data, list):
        records = []
        for index, row in enumerate(data):
            if not isinstance(row, Mapping):
                raise CL2CMError(f"{path}: row {index} is a {type(row).__name__}; expected an object with {FIELDS}")
            try:
                records.append(MetricRecord.from_json(row))
            except ValueError as err:
                raise CL2CMError(f"{path}: row {index}: {err}") from err
        return records
    if isinstance(data, Mapping):
        return _migrate_flat(data, dataset=dataset, split=split, source=str(path))
    raise CL2CMError(f"{path}: expected a list of metric rows, got {type(data).__name__}")


__all__ = ["METRICS", "TEST_RESULTS", "MetricRecord", "flat_metrics", "load_records", "records_from_metrics", "save_records", "selection_score"]
