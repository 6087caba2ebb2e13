"""The `evaluate` module cl2cm_hf/metrics/retrieval_recall: loads offline from its path, alone (without
cl2cm_hf importable), and gives the numbers of cl2cm_hf.retrieval."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cl2cm_hf import retrieval

MODULE_DIR = Path(retrieval.METRIC_MODULE_PATH)
MODULE_FILE = MODULE_DIR / "retrieval_recall.py"


def test_module_layout_suits_evaluate():
    assert MODULE_DIR.name == MODULE_FILE.stem == "retrieval_recall"
    assert (MODULE_DIR / "README.md").is_file()
    source = MODULE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            # evaluate's import checker misreads "import a, b"
            assert len(node.names) == 1, f"line {node.lineno}: one import per line"
            assert not node.names[0].name.startswith("cl2cm_hf"), "the module must work without cl2cm_hf"
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("cl2cm_hf"), "no relative or cl2cm_hf imports"


def test_retrieval_uses_the_module_formula():
    formula = retrieval._formula()
    assert Path(formula.__file__) == MODULE_FILE
    assert not hasattr(formula, "RetrievalRecall")  # the evaluate wrapper is skipped: no evaluate import
    rng = np.random.default_rng(0)
    t2v, v2t = rng.integers(1, 50, size=200), rng.integers(1, 20, size=40)
    assert retrieval.metrics_from_ranks(t2v, v2t) == formula.metrics_from_ranks(t2v, v2t)
    long = formula.inputs_from_ranks(t2v, v2t)
    assert formula.metrics_from_long_format(**long) == formula.metrics_from_ranks(t2v, v2t)
    with pytest.raises(ValueError, match="direction must be one of"):
        formula.metrics_from_long_format([1, 2], ["t2v", "sideways"])


def test_evaluate_loads_offline_standalone_and_matches(tmp_path):
    """Copy the module elsewhere, block cl2cm_hf, no network: evaluate.load by path must work and
    give exactly what retrieval_metrics gives (both directions in one compute call)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    visual = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    text_to_visual = np.repeat(np.arange(40), 3)
    text = torch.nn.functional.normalize(visual[text_to_visual] + 0.5 * torch.randn(120, 16, generator=generator), dim=1)
    ranks = retrieval.ranks(text, visual, text_to_visual)
    expected = retrieval.retrieval_metrics(text, visual, text_to_visual)

    module_copy = tmp_path / "elsewhere" / "retrieval_recall"
    shutil.copytree(MODULE_DIR, module_copy)
    (tmp_path / "ranks.json").write_text(json.dumps({"t2v": ranks.t2v.tolist(), "v2t": ranks.v2t.tolist()}))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["cl2cm_hf"] = None  # not importable: the module must stand alone
        import evaluate
        ranks = json.load(open("ranks.json"))
        metric = evaluate.load({str(module_copy)!r})
        out = {{"inputs_from_ranks": metric.compute(**metric.inputs_from_ranks(ranks["t2v"], ranks["v2t"]))}}
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
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("inputs_from_ranks", "long", "batches"):
        assert out[name] == expected, name
    assert "both directions" in out["error"]
