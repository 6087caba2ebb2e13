"""Both CL2CM stages through trainer/run.py on a tiny demo world: outputs, recipes, resume."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from cl2cm_hf.evaluation.records import flat_metrics, load_records
from cl2cm_hf.hub import metrics_table
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainer" / "configs"
# A world and towers small enough for seconds per stage.
TINY = [
    "--demo_items", "120", "--demo_validation_items", "30", "--demo_test_items", "30",
    "--text_hidden_size", "32", "--text_num_heads", "2", "--projection_dim", "16", "--visual_hidden_size", "32",
    "--per_device_train_batch_size", "16", "--tokenizer_vocab_size", "400", "--ot_iterations", "10",
    "--logging_steps", "2", "--report_to", "none", "--dataloader_num_workers", "0",
]


def run_training(config: str, output_dir: Path, *overrides: str, wait: bool = True):
    cmd = [sys.executable, str(REPO / "trainer" / "run.py"), str(CONFIGS / config), "--output_dir", str(output_dir), *TINY, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def load_standalone(folder: Path) -> str:
    """Embed with the saved model in a fresh interpreter that cannot import cl2cm_hf."""
    code = (
        "import sys; sys.modules['cl2cm_hf'] = None\n"
        "import torch\nfrom transformers import AutoModel, AutoTokenizer\n"
        f"m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "e = m.get_text_features(**{k: v for k, v in t(['ein roter hund'], return_tensors='pt').items() if k != 'token_type_ids'}).pooler_output\n"
        "print(type(m).__module__, tuple(e.shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder.parent, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("config", ["demo.yaml", "demo_video.yaml"])
def test_both_stages_write_loadable_folders(tmp_path, config):
    log = run_training(config, tmp_path, "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no",
                       "--load_best_model_at_end", "false")
    assert "Test retrieval" in log and "| de |" in log and "| fr |" in log
    assert "query:" in log  # the query demo reloaded the final folder (model and processor); own code: load_standalone
    for stage in ("cross_lingual", "cross_modal"):
        folder = tmp_path / stage
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        assert "transformers_modules" in load_standalone(folder)
    final = tmp_path / "cross_modal"
    records = load_records(final / "test_results.json")
    assert {(r.lang, r.split) for r in records} == {("de", "test"), ("fr", "test")} and {r.dataset for r in records} == {"demo world"}
    assert {"de_sumr", "fr_sumr", "sumr"} <= flat_metrics(records).keys()
    assert (tmp_path / "test_results.md").read_text() == metrics_table(records) + "\n"  # the one table writer
    card = (final / "README.md").read_text()
    assert metrics_table(records) in card and str(tmp_path) not in card  # no local path on the card
    assert ("text-to-video-retrieval" if config == "demo_video.yaml" else "text-to-image-retrieval") in card
    recipe = yaml.safe_load((final / "training_config.yaml").read_text())
    assert recipe["max_steps"] == 3 and recipe["output_dir"] == tmp_path.name  # no absolute path published
    # The saved recipe reproduces the run's settings exactly.
    assert load_config(final / "training_config.yaml") == recipe
    if config == "demo_video.yaml":
        assert json.loads((final / "config.json").read_text())["visual_num_layers"] == 1


def test_demo_recipe_trains_and_evaluates_in_bf16_on_cpu(tmp_path):
    # transformers asks for use_cpu with bf16 when no GPU is there (its own clear error otherwise).
    log = run_training("demo.yaml", tmp_path, "--use_cpu", "true", "--bf16", "true", "--max_steps", "2", "--eval_strategy", "no",
                       "--save_strategy", "no", "--load_best_model_at_end", "false")
    assert "Test retrieval" in log
    metrics = flat_metrics(load_records(tmp_path / "cross_modal" / "test_results.json"))
    assert all(math.isfinite(value) for value in metrics.values()) and metrics["sumr"] > 0


def test_validation_keeps_best_checkpoint_by_sumr(tmp_path):
    log = run_training("demo.yaml", tmp_path, "--stage", "cm", "--lambda_kt", "0", "--max_steps", "4",
                       "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    assert "eval_de_sumr" in log and "eval_fr_t2v_r1" in log
    state = json.loads(next((tmp_path / "checkpoints" / "cross_modal").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] is not None and "checkpoint-" in state["best_model_checkpoint"]


def _params(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _kill_when_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    start = time.time()
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None, f"training ended before {checkpoint} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.time() - start < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# Stage-2 state beyond Trainer's: the relation queue (saved with each checkpoint) and the
# teacher-neighbourhood batches (an order from seed and epoch).
KT_STATE = ["--precompute_teacher", "true", "--kt_queue_size", "40", "--kt_neighbour_group_size", "4"]


@pytest.mark.parametrize("stage_dir, options", [("cross_lingual", []), ("cross_modal", []), ("cross_modal", KT_STATE)],
                         ids=["cross_lingual", "cross_modal", "cross_modal_kt_state"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, stage_dir, options):
    steps = ["--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
             "--save_steps", "2", "--save_total_limit", "5", "--query", "null", *options]
    reference = tmp_path / "reference"
    run_training("demo.yaml", reference, *steps)

    interrupted = tmp_path / "interrupted"
    proc = run_training("demo.yaml", interrupted, *steps, wait=False)
    _kill_when_checkpoint(proc, interrupted / "checkpoints" / stage_dir / "checkpoint-2")
    assert not (interrupted / "cross_modal" / "test_results.json").exists()
    run_training("demo.yaml", interrupted, *steps, "--resume")

    for stage in ("cross_lingual", "cross_modal"):
        ref, got = _params(reference / stage), _params(interrupted / stage)
        assert ref.keys() == got.keys()
        for name in ref:
            assert (ref[name] == got[name]).all(), f"{stage}: {name} differs after resume"
    assert json.loads((reference / "cross_modal" / "test_results.json").read_text()) == json.loads(
        (interrupted / "cross_modal" / "test_results.json").read_text()
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--lambda_kk", "1"], "unknown key 'lambda_kk'"),
        (["--lambda_kt", "abc"], "key 'lambda_kt' expects"),
        (["--num_train_epochs", "[1, 2]"], "key 'num_train_epochs' expects"),
        (["--share_encoders", "3"], "key 'share_encoders' expects true/false"),
        (["--stage", "all"], "stage='all'"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_config(load_config(CONFIGS / "demo.yaml", overrides))


def test_bad_yaml_file_names_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("seed: 1\nlearning_rate: fast\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: key 'learning_rate' expects"):
        load_config(recipe)
    recipe.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(recipe)


def test_every_recipe_parses():
    for recipe in sorted(CONFIGS.glob("*.yaml")):
        text_model = yaml.safe_load(recipe.read_text()).get("text_model") or ""
        if text_model.startswith("pkg:") and importlib.util.find_spec(text_model[4:]) is None:
            continue  # a tower shipped in an optional package (extra 'minilm'); its own test skips with the reason
        parse_config(load_config(recipe))
