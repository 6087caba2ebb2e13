"""What `pip install .` (not editable) puts on a machine: one import package, working console scripts,
the card template inside the package.

The wheel is built from this checkout and installed without dependencies into a fresh virtualenv
whose dependencies come from the running environment (a .pth line), and every check runs with the
working directory outside the repository, so nothing is imported from the checkout.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the project's wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("pip-install")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, cwd=root,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies (torch, transformers, ...) from the running environment, after the venv's own packages.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("cl2cm_hf-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, cwd=root,
    )
    return venv / "bin", root


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_one_import_package(installed):
    bin_dir, cwd = installed
    probe = (
        "import importlib, json, cl2cm_hf\n"
        "found = {}\n"
        "for name in ('trainer', 'hub_cards', 'cl2cm_hf.training.run', 'cl2cm_hf.cli.leaderboard'):\n"
        "    try:\n"
        "        found[name] = importlib.import_module(name).__file__\n"
        "    except ImportError:\n"
        "        found[name] = None\n"
        "found['cl2cm_hf'] = cl2cm_hf.__file__\n"
        "print(json.dumps(found))\n"
    )
    result = _run(bin_dir, cwd, str(bin_dir / "python"), "-c", probe)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["trainer"] is None and found["hub_cards"] is None
    assert str(REPO) not in found["cl2cm_hf"] and "site-packages" in found["cl2cm_hf"]
    assert found["cl2cm_hf.training.run"] and found["cl2cm_hf.cli.leaderboard"]


@pytest.mark.parametrize("script", ["cl2cm-train", "cl2cm-leaderboard", "cl2cm-index", "cl2cm-search", "cl2cm-app", "cl2cm-shards"])
def test_console_scripts_help(installed, script):
    bin_dir, cwd = installed
    result = _run(bin_dir, cwd, str(bin_dir / script), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize("args, named", [
    (["cl2cm-train", "no-such-recipe.yaml"], "no-such-recipe.yaml"),
    (["cl2cm-train", "--learning_rate", "-1"], "learning_rate"),
    (["cl2cm-leaderboard", "--models", "no-such-model/", "--out", "board"], "no-such-model"),
    (["cl2cm-index", "no-such-model/", "--images", "no-such-folder", "--out", "index"], "no-such"),
    (["cl2cm-search", "no-such-index", "ein Hund"], "no-such-index"),
    (["cl2cm-shards", "all", "no-such-index"], "no-such-index"),
])
def test_console_scripts_fail_with_nonzero_status_naming_the_culprit(installed, args, named):
    bin_dir, cwd = installed
    result = _run(bin_dir, cwd, str(bin_dir / args[0]), *args[1:])
    assert result.returncode != 0
    assert named in result.stderr + result.stdout


def test_a_card_renders_from_the_installed_package(installed):
    bin_dir, cwd = installed
    script = (
        "import sys, pathlib\n"
        "from transformers import BertConfig\n"
        "import cl2cm_hf\n"
        "from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel\n"
        "from cl2cm_hf.evaluation.records import records_from_metrics\n"
        "from cl2cm_hf.hub import build_card\n"
        "from cl2cm_hf.retrieval import metrics_from_ranks\n"
        "folder = pathlib.Path('ckpt').absolute()\n"  # in the fixture's folder (cwd), not left in the system's
        "text = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)\n"
        "CL2CMCrossModalModel(CL2CMCrossModalConfig(text_config=text.to_dict(), visual_feature_dim=8, projection_dim=8)).save_pretrained(folder)\n"
        "records = records_from_metrics(metrics_from_ranks([1, 2, 3], [1, 1, 2]), dataset='demo', split='test', lang='de')\n"
        "build_card(folder, records, repo_id='org/x', model_name='x', target_languages=['de'], visual_modality='image')\n"
        "card = (folder / 'README.md').read_text()\n"
        "assert 'model-index' in card and 'AutoProcessor' in card, card[:500]\n"
        "print(pathlib.Path(cl2cm_hf.__file__).parent)\n"
    )
    result = _run(bin_dir, cwd, str(bin_dir / "python"), "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "site-packages" in result.stdout and str(REPO) not in result.stdout
