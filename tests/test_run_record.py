"""The run record that ties an output folder to one run and its settings (cl2cm_hf.training.run_record)."""

import json

import pytest

from cl2cm_hf.training.recipe import load_config, parse_config
from cl2cm_hf.training.run_record import (
    RUN_RECORD,
    RunMismatchError,
    check_owned,
    claim_output_dir,
    clear_outputs,
    result_settings,
    write_record,
)

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`


def _settings(**overrides):
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    values = load_config(None, argv)
    return result_settings(parse_config(values), values)


def test_settings_hold_what_changes_results_and_leave_out_where_it_is_written():
    settings = _settings(output_dir="/somewhere/private", lambda_kt=0.5, logging_steps=3)
    assert settings["lambda_kt"] == 0.5 and "seed" in settings and "target_langs" in settings
    assert "output_dir" not in settings and "logging_steps" not in settings
    json.dumps(settings)  # plain JSON values only


def test_fresh_run_refuses_another_runs_outputs_unless_overwriting(tmp_path):
    write_record(tmp_path, claim_output_dir(tmp_path, _settings(), resume=False, overwrite=False))
    (tmp_path / "cross_lingual").mkdir()
    with pytest.raises(RunMismatchError, match="another run's outputs.*cross_lingual.*--overwrite_output_dir"):
        claim_output_dir(tmp_path, _settings(), resume=False, overwrite=False)
    (tmp_path / "mine.txt").write_text("not a run output")
    claim_output_dir(tmp_path, _settings(), resume=False, overwrite=True)
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_resume_lists_every_changed_setting_and_accepts_allowed_ones(tmp_path):
    record = claim_output_dir(tmp_path, _settings(lambda_kt=1.0, seed=1), resume=False, overwrite=False)
    write_record(tmp_path, record)
    with pytest.raises(RunMismatchError) as err:
        claim_output_dir(tmp_path, _settings(lambda_kt=0.5, seed=2), resume=True, overwrite=False)
    assert "lambda_kt: 1.0 -> 0.5" in str(err.value) and "seed: 1 -> 2" in str(err.value)
    resumed = claim_output_dir(
        tmp_path, _settings(lambda_kt=0.5, seed=1), resume=True, overwrite=False, allow_changes=["lambda_kt"]
    )
    assert resumed["run_id"] == record["run_id"] and resumed["settings"]["lambda_kt"] == 0.5
    assert resumed["accepted_changes"][0]["changes"] == {"lambda_kt": [1.0, 0.5]}
    same = claim_output_dir(tmp_path, _settings(lambda_kt=1.0, seed=1, logging_steps=99), resume=True, overwrite=False)
    assert same == record  # a log setting is not a change of the run


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    with pytest.raises(RunMismatchError, match="nothing to resume"):
        claim_output_dir(tmp_path, _settings(), resume=True, overwrite=False)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RunMismatchError, match=f"no {RUN_RECORD}"):
        claim_output_dir(tmp_path, _settings(), resume=True, overwrite=False)


def test_unreadable_record_and_foreign_stage_folder_are_named(tmp_path):
    (tmp_path / RUN_RECORD).write_text("{not json")
    with pytest.raises(RunMismatchError, match="unreadable run record"):
        claim_output_dir(tmp_path, _settings(), resume=True, overwrite=False)
    record = claim_output_dir(tmp_path / "new", _settings(), resume=False, overwrite=False)
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(RunMismatchError, match="belongs to another run.*no run record"):
        check_owned(stage, record, "stage folder")
    write_record(stage, record)
    check_owned(stage, record, "stage folder")


def test_a_run_continues_only_its_own_run(tmp_path):
    """Through trainer/run.py: a fresh run over another run's outputs, a resume with changed settings
    and a resume with nothing to resume all stop before training, naming what is wrong."""
    import subprocess
    import sys

    from test_training import CONFIGS, REPO, TINY, run_training

    def attempt(out, *overrides):
        cmd = [sys.executable, str(REPO / "trainer" / "run.py"), str(CONFIGS / "demo.yaml"), "--output_dir", str(out), *TINY,
               "--stage", "cl", "--max_steps", "2", *overrides]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    out = tmp_path / "run"
    run_training("demo.yaml", out, "--stage", "cl", "--max_steps", "2")
    record = json.loads((out / RUN_RECORD).read_text())
    assert json.loads((out / "cross_lingual" / RUN_RECORD).read_text())["run_id"] == record["run_id"]
    fresh = attempt(out)
    assert fresh.returncode != 0 and "another run's outputs" in fresh.stderr and "Traceback" not in fresh.stderr
    changed = attempt(out, "--resume", "true", "--lambda_word", "0.5", "--seed", "7")
    assert changed.returncode != 0 and "lambda_word: 0.1 -> 0.5" in changed.stderr and "seed: 42 -> 7" in changed.stderr
    nothing = attempt(tmp_path / "empty", "--resume", "true")
    assert nothing.returncode != 0 and "nothing to resume" in nothing.stderr
    assert json.loads((out / RUN_RECORD).read_text()) == record  # refused attempts change nothing
    replaced = attempt(out, "--overwrite_output_dir", "true", "--lambda_word", "0.5")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads((out / RUN_RECORD).read_text())["run_id"] != record["run_id"]
