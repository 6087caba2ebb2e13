"""Kill and resume, and determinism, through trainer/run.py on the tiny demo world.

- SIGKILL at a random step of each stage (a seeded random checkpoint step plus a random delay, so
  the kill may also land in the middle of a checkpoint save), then ``--resume``: the final weights
  of both stages and the test metrics equal those of an uninterrupted run with the same seed.
- Two runs with the same seed give identical test metrics and weights.

The seed of the random choices is printed and can be fixed with ``CL2CM_KILL_SEED``.
"""

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from test_training import _params, run_training

from cl2cm_hf.training.checkpoints import CHECKPOINT_COMPLETE

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

# Every step saves (so "checkpoint-k exists" means "step k is done") and validates (so the resumed
# run must also restore best-model tracking); three checkpoints kept.
STEPS = ["--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps",
         "--save_steps", "1", "--save_total_limit", "3", "--query", "null"]
KILL_SEED = int(os.environ.get("CL2CM_KILL_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (shared by the tests of this file)."""
    out = tmp_path_factory.mktemp("reference")
    run_training("demo.yaml", out, *STEPS)
    return out


def _kill_at(proc, checkpoint: Path, delay: float, what: str, timeout: float = 300) -> None:
    """SIGKILL `proc` `delay` seconds after `checkpoint` appears (Trainer creates the folder first and
    then writes into it, so a short delay kills in the middle of the save)."""
    start = time.time()
    while not checkpoint.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: training ended before {checkpoint} appeared:\n{proc.stdout.read()[-3000:]}")
        assert time.time() - start < timeout, what
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _assert_same_run(reference: Path, other: Path, what: str) -> None:
    for stage in ("cross_lingual", "cross_modal"):
        ref, got = _params(reference / stage), _params(other / stage)
        assert ref.keys() == got.keys(), what
        differ = [name for name in ref if not (ref[name] == got[name]).all()]
        assert not differ, f"{what}: {stage} weights differ: {differ[:5]}"
    ref_metrics = json.loads((reference / "cross_modal" / "test_results.json").read_text())
    got_metrics = json.loads((other / "cross_modal" / "test_results.json").read_text())
    assert ref_metrics == got_metrics, what


def test_sigkill_at_random_steps_of_both_stages_then_resume_matches_uninterrupted_run(reference, tmp_path):
    rng = random.Random(KILL_SEED)
    plan = [(stage, rng.randint(1, 5), rng.uniform(0.0, 0.4)) for stage in ("cross_lingual", "cross_modal")]
    what = f"CL2CM_KILL_SEED={KILL_SEED}: kills after (stage, checkpoint step, delay s) {plan}"
    print(what)
    out = tmp_path / "interrupted"
    for index, (stage, step, delay) in enumerate(plan):
        resume = ["--resume"] if index else []
        proc = run_training("demo.yaml", out, *STEPS, *resume, wait=False)
        _kill_at(proc, out / "checkpoints" / stage / f"checkpoint-{step}", delay, what)
        assert not (out / "cross_modal" / "test_results.json").exists(), what
        # Trainer writes checkpoint-N in place, so the kill may leave one half-written; resume trusts only
        # the checkpoints with the completion mark, and those hold everything.
        for folder in (out / "checkpoints" / stage).glob("checkpoint-*"):
            if (folder / CHECKPOINT_COMPLETE).exists():
                assert (folder / "trainer_state.json").exists() and (folder / "model.safetensors").exists(), f"{what}: {folder}"
    run_training("demo.yaml", out, *STEPS, "--resume")
    _assert_same_run(reference, out, what)


def test_two_runs_with_the_same_seed_give_identical_metrics_and_weights(reference, tmp_path):
    run_training("demo.yaml", tmp_path / "again", *STEPS)
    _assert_same_run(reference, tmp_path / "again", "a second run with the same seed")


def _resume_argv(out: Path, *more: str) -> list[str]:
    from test_training import CONFIGS, TINY

    return [str(CONFIGS / "demo.yaml"), "--output_dir", str(out), *TINY, "--max_steps", "2", "--save_strategy", "steps",
            "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1", "--query", "null", *more]


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from cl2cm_hf.cli.train import main

    status = main(argv)
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny two-stage demo run whose checkpoints carry its run record."""
    from cl2cm_hf.cli.train import main

    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(_resume_argv(out)) == 0
    return out


def test_resume_allow_changes_takes_several_keys_as_the_readme_writes_it(finished_run, tmp_path, capsys):
    """`--resume_allow_changes k1 k2` accepts exactly the listed keys; any other change is refused
    naming the setting, its recorded and its new value. A relation queue switched on by an allowed
    change starts empty (the checkpoint was written without one), not as a "missing file"."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    record = json.loads((out / "run.json").read_text())
    stamped = json.loads((out / "checkpoints" / "cross_modal" / "checkpoint-2" / "run.json").read_text())
    assert stamped == record  # every checkpoint carries the record it was written under
    changed = ["--kt_queue_size", "32", "--kt_temperature", "0.5", "--max_steps", "3"]

    status, err = _main(_resume_argv(out, *changed, "--resume", "--resume_allow_changes", "kt_queue_size", "max_steps"), capsys)
    assert status == 2 and err.count("\n") == 1 and "kt_temperature: 1.0 -> 0.5" in err, err
    assert "kt_queue_size" not in err and "max_steps" not in err  # the allowed ones are not named as refused
    assert json.loads((out / "run.json").read_text()) == record  # a refused resume changes nothing

    status, err = _main(
        _resume_argv(out, *changed, "--resume", "--resume_allow_changes", "kt_queue_size", "kt_temperature", "max_steps"), capsys
    )
    assert status == 0, err[-3000:]
    accepted = json.loads((out / "run.json").read_text())["accepted_changes"][-1]["changes"]
    assert accepted == {"kt_queue_size": [0, 32], "kt_temperature": [1.0, 0.5], "max_steps": [2, 3]}
    assert (out / "checkpoints" / "cross_modal" / "checkpoint-3" / "relation_queue.safetensors").is_file()


def test_resume_under_a_change_the_checkpoint_cannot_take_names_the_change(finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    status, err = _main(_resume_argv(out, "--visual_hidden_size", "48", "--resume", "--resume_allow_changes", "visual_hidden_size"), capsys)
    assert status == 2 and err.count("\n") == 1, err[-3000:]
    assert "checkpoint-2 does not continue under the settings changed since it was written (visual_hidden_size: 32 -> 48)" in err
    assert "weights do not fit" in err and "Traceback" not in err
