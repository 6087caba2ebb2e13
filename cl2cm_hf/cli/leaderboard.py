"""Leaderboard: several checkpoints x test sets x languages, scored by the `evaluate` metric module.

    python trainer/leaderboard.py --models runs/a/cross_modal org/cl2cm-demo --datasets demo multi30k_r50 \
        --langs de fr --out leaderboard [--update-cards]

Datasets: `demo` / `demo_video` (the test split of the demo world of trainer/configs/demo*.yaml),
`multi30k_r50` (the 1000 Multi30K test_2016 images, ResNet-50 features, human de/fr queries; needs
../shared), or `QUERIES@FEATURES` (a query table, jsonl/csv/parquet, and a feature-store folder).

Writes `<out>.md` (a table) and `<out>.json` (``{"rows": [...], "failures": {...}}``, one metric
record per model x dataset x language x direction x metric, `records.load_records` reads it) after
every model, atomically, so a model that fails loses nothing already computed; the failures are
listed in both files and the exit status is 1. `--update-cards` merges each model's records into its
README.md as `model-index` (local folders only).
"""

import argparse
import importlib.resources
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import evaluate

from cl2cm_hf.atomic import atomic_write_text
from cl2cm_hf.cli import run_tool
from cl2cm_hf.data import MissingVisualIdError, VisualFeatureStore, load_multi30k_r50, load_queries
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.evaluator import CrossModalEvaluator
from cl2cm_hf.evaluation.records import MetricRecord, records_from_metrics
from cl2cm_hf.hub import metrics_table, update_card_results
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.retrieval import METRIC_MODULE_PATH
from cl2cm_hf.training.data_sources import demo_world
from cl2cm_hf.training.recipe import load_config, parse_config

SPLIT = "test"  # every test set of the leaderboard is a test split


@dataclass
class TestSet:
    name: str
    queries: object  # datasets.Dataset of (visual_id, text, lang)
    features: VisualFeatureStore

    @property
    def visual_modality(self) -> str:
        return "video" if self.features.is_video else "image"


def _demo(recipe: str) -> Callable[[argparse.Namespace], TestSet]:
    def build(_args) -> TestSet:
        with importlib.resources.as_file(importlib.resources.files("cl2cm_hf.recipes") / recipe) as path:
            _, data_args, _, training_args = parse_config(load_config(path))
        world = demo_world(data_args, training_args.seed)
        return TestSet(recipe.removesuffix(".yaml"), world.queries["test"], world.features)

    return build


def _multi30k_r50(args) -> TestSet:
    data = load_multi30k_r50(args.shared_root)
    return TestSet("multi30k_r50", data["queries"], data["features"])


DATASETS = {"demo": _demo("demo.yaml"), "demo_video": _demo("demo_video.yaml"), "multi30k_r50": _multi30k_r50}


def load_test_set(spec: str, args) -> TestSet:
    if spec in DATASETS:
        return DATASETS[spec](args)
    if "@" in spec:
        queries, features = spec.split("@", 1)
        return TestSet(Path(queries).stem, load_queries(queries), VisualFeatureStore.load(features))
    raise CL2CMError(f"unknown dataset {spec!r}: expected one of {sorted(DATASETS)} or QUERIES@FEATURES")


def score(model_name: str, model, tokenizer, test_set: TestSet, langs, metric) -> list[MetricRecord]:
    """Records of one model on one test set (`model` field: `model_name`), metrics from the evaluate module."""
    expected = model.config.visual_feature_dim
    if model.config.visual_encoder_type == "features" and test_set.features.feature_dim != expected:
        raise CL2CMError(
            f"{test_set.name}: features have dim {test_set.features.feature_dim} but {model_name} expects {expected}"
        )
    evaluator = CrossModalEvaluator(
        test_set.queries, test_set.features, tokenizer, langs, max_length=64, text_prefix=model.config.text_prefix,
        dataset=test_set.name, split=SPLIT,
    )
    try:
        ranks_by_lang = evaluator.ranks(model)
    except MissingVisualIdError as err:
        raise CL2CMError(f"{test_set.name}: {err}") from err
    records = []
    for lang, result in ranks_by_lang.items():
        predictions = [*result.t2v.tolist(), *result.v2t.tolist()]
        directions = ["t2v"] * len(result.t2v) + ["v2t"] * len(result.v2t)
        metrics = metric.compute(predictions=predictions, direction=directions)
        records += records_from_metrics(metrics, dataset=test_set.name, split=SPLIT, lang=lang, model=model_name)
    return records


def markdown(records: list[MetricRecord], failures: dict[str, str]) -> str:
    """The leaderboard table (`metrics_table`) and the list of models that failed."""
    lines = [metrics_table(records)]
    if failures:
        lines += ["", "Failed:", ""] + [f"- {model}: {error}" for model, error in failures.items()]
    return "\n".join(lines) + "\n"


def write(out: Path, records: list[MetricRecord], failures: dict[str, str]) -> None:
    rows = [record.to_json() for record in records]
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "failures": failures}, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(records, failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="checkpoint folders or hub ids")
    parser.add_argument("--datasets", nargs="+", default=["demo"])
    parser.add_argument("--langs", nargs="+", default=["de", "fr"])
    parser.add_argument("--out", default="leaderboard", help="output path without suffix (.md and .json are written)")
    parser.add_argument("--shared-root", default="../shared", help="multi30k_r50: the folder holding data/")
    parser.add_argument("--update-cards", action="store_true", help="write results into each local model's README.md")
    args = parser.parse_args(argv)

    def run() -> int:
        metric = evaluate.load(METRIC_MODULE_PATH)
        test_sets = [load_test_set(spec, args) for spec in args.datasets]
        out, rows, failures = Path(args.out), [], {}
        for name in args.models:
            try:
                model, tokenizer = load_model_and_processor(name)
                scored = [(test_set, score(name, model, tokenizer, test_set, args.langs, metric)) for test_set in test_sets]
            except Exception as err:  # one failing model must not lose the others' rows
                failures[name] = f"{type(err).__name__}: {err}"
                print(f"FAILED {name}: {failures[name]}", file=sys.stderr)
            else:
                for test_set, records in scored:
                    rows += records
                    if args.update_cards and Path(name).is_dir():
                        update_card_results(name, records, visual_modality=test_set.visual_modality)
            write(out, rows, failures)
        print(markdown(rows, failures))
        return 1 if failures else 0

    return run_tool("cl2cm-leaderboard", run)


if __name__ == "__main__":
    sys.exit(main())
