"""The `evaluate` module cl2cm_hf/metrics/retrieval_recall: a thin wrapper of the formula in
cl2cm_hf.retrieval.metrics that loads offline from its path and gives the numbers of cl2cm_hf.retrieval."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cl2cm_hf import retrieval
from cl2cm_hf.retrieval import metrics

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = Path(retrieval.METRIC_MODULE_PATH)
MODULE_FILE = MODULE_DIR / "retrieval_recall.py"


def test_module_layout_suits_evaluate():
    assert MODULE_DIR.name == MODULE_FILE.stem == "retrieval_recall"
    assert (MODULE_DIR / "README.md").is_file()
    source = MODULE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    formula_imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            # evaluate's import checker misreads "import a, b"
            assert len(node.names) == 1, f"line {node.lineno}: one import per line"
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: no relative imports (evaluate copies the file alone)"
            assert len(node.names) == 1, f"line {node.lineno}: one import per line"
            if node.module == "cl2cm_hf.retrieval.metrics":
                formula_imports.add(node.names[0].name)
    assert formula_imports == {"inputs_from_ranks", "metrics_from_long_format"}
    # Thin: the formula is imported, not defined here, and nothing depends on the module's name.
    assert not [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert "__name__" not in source


def test_retrieval_uses_the_one_formula():
    assert retrieval.metrics_from_ranks is metrics.metrics_from_ranks
    assert retrieval.recall_at_k is metrics.recall_at_k
    assert retrieval.METRIC_KEYS is metrics.METRIC_KEYS and retrieval.DIRECTIONS is metrics.DIRECTIONS
    rng = np.random.default_rng(0)
    t2v, v2t = rng.integers(1, 50, size=200), rng.integers(1, 20, size=40)
    assert list(metrics.metrics_from_ranks(t2v, v2t)) == list(metrics.METRIC_KEYS)
    long = metrics.inputs_from_ranks(t2v, v2t)
    assert metrics.metrics_from_long_format(**long) == metrics.metrics_from_ranks(t2v, v2t)
    with pytest.raises(ValueError, match="direction must be one of"):
        metrics.metrics_from_long_format([1, 2], ["t2v", "sideways"])


def test_evaluate_loads_offline_and_matches(tmp_path):
    """No network: evaluate.load(METRIC_MODULE_PATH) must work, wrap cl2cm_hf.retrieval.metrics and
    give exactly what retrieval_metrics gives (both directions in one compute call, or in batches)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    visual = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    text_to_visual = np.repeat(np.arange(40), 3)
    text = torch.nn.functional.normalize(visual[text_to_visual] + 0.5 * torch.randn(120, 16, generator=generator), dim=1)
    ranks = retrieval.ranks(text, visual, text_to_visual)
    expected = retrieval.retrieval_metrics(text, visual, text_to_visual)

    (tmp_path / "ranks.json").write_text(json.dumps({"t2v": ranks.t2v.tolist(), "v2t": ranks.v2t.tolist()}))
    script = textwrap.dedent(
        f"""
        import json
        import evaluate
        from cl2cm_hf.retrieval import metrics as formula
        ranks = json.load(open("ranks.json"))
        metric = evaluate.load({retrieval.METRIC_MODULE_PATH!r})
        out = {{"formula_file": formula.__file__, "same_formula": metric.inputs_from_ranks is formula.inputs_from_ranks}}
        out["inputs_from_ranks"] = metric.compute(**metric.inputs_from_ranks(ranks["t2v"], ranks["v2t"]))
        out["long"] = metric.compute(
            predictions=ranks["t2v"] + ranks["v2t"], direction=["t2v"] * len(ranks["t2v"]) + ["v2t"] * len(ranks["v2t"])
        )
        half = len(ranks["t2v"]) // 2
        metric.add_batch(predictions=ranks["t2v"][:half], direction=["t2v"] * half)
        metric.add_batch(predictions=ranks["v2t"] + ranks["t2v"][half:],
                         direction=["v2t"] * len(ranks["v2t"]) + ["t2v"] * (len(ranks["t2v"]) - half))
        out["batches"] = metric.compute()
        try:
            metric.compute(predictions=[1, 2], direction=["t2v", "t2v"])
        except ValueError as error:
            out["error"] = str(error)
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(REPO))  # this checkout's cl2cm_hf, whatever is installed
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["formula_file"]) == Path(metrics.__file__) and out["same_formula"]
    for name in ("inputs_from_ranks", "long", "batches"):
        assert out[name] == expected, name
    assert "both directions" in out["error"]
