"""Metric records: JSON round trip, the old flat test_results.json, the selection score, the one table writer."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cl2cm_hf.evaluation.records import (
    METRICS,
    MetricRecord,
    flat_metrics,
    load_records,
    records_from_metrics,
    save_records,
    selection_score,
)
from cl2cm_hf.hub import metrics_table
from cl2cm_hf.retrieval import DIRECTIONS, METRIC_KEYS, metrics_from_ranks

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(3)
PER_LANG = {lang: metrics_from_ranks(RNG.integers(1, 40, 77), RNG.integers(1, 9, 13)) for lang in ("de", "fr", "cs")}


def records(dataset="multi30k", split="test", model=None):
    return [r for lang, m in PER_LANG.items() for r in records_from_metrics(m, dataset=dataset, split=split, lang=lang, model=model)]


def test_records_follow_the_metric_keys():
    got = records()
    assert [r.key for r in got[: len(METRIC_KEYS)]] == list(METRIC_KEYS)
    assert {r.direction for r in got} == {*DIRECTIONS, None} and METRICS == ("r1", "r5", "r10", "medr", "mnr", "sumr")
    assert all((r.direction is None) == (r.metric == "sumr") for r in got)
    with pytest.raises(ValueError, match=r"lack \['sumr'\]"):
        records_from_metrics({k: 1.0 for k in METRIC_KEYS[:-1]}, dataset="d", split="test", lang="de")


def test_json_round_trip(tmp_path):
    original = records() + records(dataset="demo", split=None, model="runs/a")
    assert [MetricRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in original] == original
    assert "model" not in original[0].to_json() and original[-1].to_json()["model"] == "runs/a"
    save_records(original, tmp_path / "test_results.json")
    assert load_records(tmp_path / "test_results.json") == original
    # a leaderboard file ({"rows": [...], "failures": {...}}) reads the same way
    (tmp_path / "board.json").write_text(json.dumps({"rows": [r.to_json() for r in original], "failures": {}}))
    assert load_records(tmp_path / "board.json") == original
    (tmp_path / "bad.json").write_text(json.dumps([original[0].to_json(), dict(original[1].to_json(), metric="bleu")]))
    with pytest.raises(ValueError, match=r"bad\.json: row 1: .*unknown retrieval metric 'bleu'"):
        load_records(tmp_path / "bad.json")


def test_selection_score_and_flat_scalars_are_the_old_values():
    """`eval_sumr` (best checkpoint) and the logged `eval_<lang>_<key>`: the same floats, in the same
    order, as the flat dict the evaluator returned before records."""
    old = {f"{lang}_{k}": v for lang, metrics in PER_LANG.items() for k, v in metrics.items()}
    old["sumr"] = sum(m["sumr"] for m in PER_LANG.values()) / len(PER_LANG)
    flat = flat_metrics(records())
    assert list(flat.items()) == list(old.items())  # exact equality, key order included
    assert selection_score(records()) == old["sumr"]
    with pytest.raises(ValueError, match="no sumr record"):
        selection_score([r for r in records() if r.metric != "sumr"])


def test_old_flat_test_results_are_migrated_with_a_warning(tmp_path, caplog):
    path = tmp_path / "test_results.json"
    old = {f"{lang}_{k}": v for lang, metrics in PER_LANG.items() for k, v in metrics.items()}
    old["sumr"] = 123.0  # the mean over languages: derived, not a record
    path.write_text(json.dumps(old, indent=2))
    with caplog.at_level(logging.WARNING, logger="cl2cm_hf.evaluation.records"):
        got = load_records(path, dataset="multi30k")
    assert got == records()
    assert "old flat format" in caplog.text and str(path) in caplog.text and "save_records" in caplog.text
    path.write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ValueError, match="neither a list of metric rows nor flat"):
        load_records(path)


def test_metrics_table_one_line_per_cell():
    table = metrics_table(records()).splitlines()
    assert table[0] == ("| Dataset | Split | Lang | T2V R@1 | T2V R@5 | T2V R@10 | T2V MedR | T2V MnR | "
                        "V2T R@1 | V2T R@5 | V2T R@10 | V2T MedR | V2T MnR | SumR |")
    assert [line.split(" | ")[2] for line in table[2:]] == ["de", "fr", "cs"]  # order of first appearance
    de = PER_LANG["de"]
    assert table[2].startswith(f"| multi30k | test | de | {de['t2v_r1']:.1f} |") and f"| {de['t2v_medr']:g} |" in table[2]
    with_models = metrics_table(records(model="a") + records(model="b")[:1]).splitlines()
    assert with_models[0].startswith("| Model | Dataset |") and len(with_models) == 2 + 3 + 1
    assert with_models[-1].startswith("| b | multi30k | test | de | ") and with_models[-1].endswith("| - | - |")
    assert metrics_table([]) == "_No evaluation results recorded yet._"


def test_one_table_writer_and_one_metric_key_list():
    """Markdown tables of results come from `metrics_table` only, and no module re-lists the keys."""
    writers, listers = [], []
    for path in sorted((REPO / "cl2cm_hf").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "---|" in text or "|---" in text:
            writers.append(path.relative_to(REPO).as_posix())
        if '"t2v_r10"' in text or "'t2v_r10'" in text:
            listers.append(path.relative_to(REPO).as_posix())
    assert writers == ["cl2cm_hf/hub/results.py"]
    assert listers == ["cl2cm_hf/retrieval/metrics.py"]
