"""trainer/leaderboard.py on two trained demo checkpoints: table, JSON, cards, failures."""

import json

import numpy as np
import pytest
from huggingface_hub import ModelCard
from test_training import run_training

from cl2cm_hf.cli.leaderboard import main as leaderboard
from cl2cm_hf.data import VisualFeatureStore, make_queries
from cl2cm_hf.evaluation.records import load_records
from cl2cm_hf.hub import metrics_table

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

DIRECTIONS = {"t2v", "v2t", None}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folders = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"run{seed}")
        run_training("demo.yaml", out, "--seed", str(seed), "--max_steps", "2", "--eval_strategy", "no",
                     "--save_strategy", "no", "--load_best_model_at_end", "false", "--query", "null")
        folders.append(out / "cross_modal")
    return folders


def test_two_checkpoints_table_json_and_cards(checkpoints, tmp_path):
    out = tmp_path / "board"
    assert leaderboard(["--models", *map(str, checkpoints), "--datasets", "demo", "--out", str(out), "--update-cards"]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    # one row per model x dataset x language x direction x metric
    keys = {(r["model"], r["dataset"], r["lang"], r["direction"], r["metric"]) for r in rows}
    assert len(keys) == len(rows) == 2 * 1 * 2 * (2 * 5 + 1)
    assert {r["direction"] for r in rows} == DIRECTIONS
    table = out.with_suffix(".md").read_text()
    assert all(f"| {folder} | demo | test | {lang} |" in table for folder in checkpoints for lang in ("de", "fr"))
    assert table == metrics_table(load_records(out.with_suffix(".json"))) + "\n"  # the one table writer, from the records
    for folder in checkpoints:
        card = ModelCard.load(folder / "README.md")
        mine = {(r["lang"], r["direction"], r["metric"]): r["value"] for r in rows if r["model"] == str(folder)}
        results = card.data.eval_results
        assert any(res.dataset_type == "demo" and res.metric_value == pytest.approx(mine[("de", "t2v", "r1")])
                   for res in results if res.metric_type == "recall@1")
        assert {res.task_type for res in results} == {"text-to-image-retrieval", "image-to-text-retrieval", "image-text-retrieval"}


def _store(tmp_path, ids, dim):
    folder = tmp_path / f"features{dim}"
    VisualFeatureStore.from_arrays(ids, np.random.default_rng(0).normal(size=(len(ids), dim)).astype("float32")).save(folder)
    return folder


def test_failures_are_reported_and_other_rows_kept(checkpoints, tmp_path):
    queries = tmp_path / "queries.jsonl"
    make_queries({"visual_id": ["a", "b", "ghost"], "text": ["ein hund", "eine katze", "ein auto"], "lang": ["de"] * 3}).to_json(queries)
    lacking = f"{queries}@{_store(tmp_path, ['a', 'b'], 64)}"
    out = tmp_path / "board"
    status = leaderboard(["--models", str(checkpoints[0]), str(tmp_path), "--datasets", "demo", "--langs", "de", "--out", str(out)])
    assert status == 1
    report = json.loads(out.with_suffix(".json").read_text())
    assert {r["model"] for r in report["rows"]} == {str(checkpoints[0])}
    assert "is not a checkpoint" in report["failures"][str(tmp_path)]
    assert "Failed:" in out.with_suffix(".md").read_text()

    leaderboard(["--models", str(checkpoints[0]), "--datasets", lacking, "--langs", "de", "--out", str(out)])
    assert "'ghost'" in json.loads(out.with_suffix(".json").read_text())["failures"][str(checkpoints[0])]

    wrong_dim = f"{queries}@{_store(tmp_path, ['a', 'b', 'ghost'], 32)}"
    leaderboard(["--models", str(checkpoints[0]), "--datasets", wrong_dim, "--langs", "de", "--out", str(out)])
    assert "features have dim 32" in json.loads(out.with_suffix(".json").read_text())["failures"][str(checkpoints[0])]
