"""The README's "Results" table says what the offline real benchmark's results file holds."""

import json
import re
from pathlib import Path

import pytest

from cl2cm_hf.retrieval import metrics_from_ranks

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "multi30k_r50.json"
RANKS = REPO / "benchmarks" / "results" / "multi30k_r50_ranks.json"
SYSTEMS = ("untrained", "english_only", "mt_no_transfer", "cl2cm", "cl2cm_no_kt")  # cl2cm_no_kt: since issue 22
ROW = re.compile(r"^\| (e5|minilm) \| (\w+) \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|", re.M)


def readme_results() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Results\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_results_file_has_the_promised_rows():
    if not RESULTS.exists():
        pytest.skip(f"{RESULTS} not written yet (python benchmarks/quality_multi30k_r50.py)")
    report = json.loads(RESULTS.read_text())
    assert report["complete"] and report["folds"] == [0, 1, 2, 3, 4]
    rows = report["rows"]
    assert set(report["towers"]) == {"e5", "minilm"} and set(report["systems"]) <= set(SYSTEMS)
    for row in rows:
        assert row["tower"] in ("e5", "minilm") and row["system"] in report["systems"]
        assert row["lang"] in ("de", "fr") and (row["fold"] in ("mean", "std") or row["fold"] in range(5))
        assert {"t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "sumr"} <= row.keys()
        if row["fold"] != "std":  # SumR is the sum of the six recalls (a std is not)
            recalls = sum(row[k] for k in ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10"))
            assert row["sumr"] == pytest.approx(recalls, abs=0.01)
    # every tower x system x lang: five folds plus mean and std
    assert len(rows) == 2 * len(report["systems"]) * 2 * 7


def test_saved_ranks_give_the_reported_metrics():
    """The per-query ranks saved beside the results (the bootstrap's input) are those of the reported rows."""
    if not RANKS.exists():
        pytest.skip(f"{RANKS} not written yet (python benchmarks/quality_multi30k_r50.py)")
    report, ranks = json.loads(RESULTS.read_text()), json.loads(RANKS.read_text())
    folds = [r for r in report["rows"] if isinstance(r["fold"], int)]
    assert len(ranks) == len(folds)
    for row in folds:
        saved = ranks[f"{row['tower']}|{row['system']}|{row['lang']}|{row['fold']}"]
        assert len(saved["t2v"]) == len(saved["item"]) == len(saved["v2t"]) == 200  # one query per test image
        assert sorted(saved["item"]) == list(range(200))
        metrics = metrics_from_ranks(saved["t2v"], saved["v2t"])
        assert metrics["sumr"] == pytest.approx(row["sumr"], abs=0.001) and metrics["v2t_r1"] == pytest.approx(row["v2t_r1"], abs=0.001)


def test_readme_table_matches_the_results_file():
    if not RESULTS.exists():
        pytest.skip(f"{RESULTS} not written yet (python benchmarks/quality_multi30k_r50.py)")
    report = json.loads(RESULTS.read_text())
    stats = {(r["tower"], r["system"], r["lang"], r["fold"]): r["sumr"] for r in report["rows"] if isinstance(r["fold"], str)}
    table = ROW.findall(readme_results())
    assert len(table) == 2 * len(report["systems"]), "expected one README row per tower x system"
    for tower, system, de_mean, de_std, fr_mean, fr_std in table:
        for lang, mean, std in (("de", de_mean, de_std), ("fr", fr_mean, fr_std)):
            assert float(mean) == pytest.approx(stats[tower, system, lang, "mean"], abs=0.051), (tower, system, lang)
            assert float(std) == pytest.approx(stats[tower, system, lang, "std"], abs=0.051), (tower, system, lang)
