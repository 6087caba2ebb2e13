"""`make demo` is quiet: a shrunk demo run prints no warnings and no library progress bars, only the
Trainer's bar per stage, the evaluation lines, the test table and the query hits."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cl2cm_hf.torch_state import cpu_threads
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
# The demo recipe as `make demo` runs it, shrunk to seconds.
SHRUNK = [
    "--demo_items", "128", "--demo_validation_items", "32", "--demo_test_items", "32", "--text_num_layers", "1",
    "--cl_num_train_epochs", "1", "--num_train_epochs", "1",
]
# A Python warning ("path.py:12: UserWarning: ..."), a logging warning ("WARNING:name:..."), or any Warning class.
WARNING_LINE = re.compile(r"Warning|WARNING|^\S+\.py:\d+: ")
BAR_LINE = re.compile(r"\d+%\|.*\|.*\[.*(?:it/s|s/it|examples/s)")
TRAINER_BAR = re.compile(r"^\s*\d+%\|")  # Trainer's bars have no description; library bars do ("Map", "Filter", ...)


def test_shrunk_demo_prints_no_warnings_and_no_library_bars(tmp_path):
    cmd = [sys.executable, str(REPO / "trainer" / "run.py"), str(REPO / "trainer" / "configs" / "demo.yaml"),
           "--output_dir", str(tmp_path / "demo"), *SHRUNK]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    lines = [line for line in re.split(r"[\r\n]", output) if line.strip()]

    warnings = [line for line in lines if WARNING_LINE.search(line)]
    assert not warnings, "\n".join(warnings)
    bars = [line for line in lines if BAR_LINE.search(line)]
    library_bars = [line for line in bars if not TRAINER_BAR.match(line)]
    assert not library_bars, "\n".join(library_bars[:20])
    assert bars, "the Trainer's progress bar is kept"

    assert any(line.startswith("{'eval_") for line in lines), "the evaluation lines are kept"
    table = output.index("Test retrieval (demo world")
    assert "| de |" in output[table:] and "| fr |" in output[table:]
    query = output.index("query: 'ein großer roter Hund")
    assert query > table
    hits = [line for line in output[query:].splitlines() if re.match(r"\s+\d+\. \S+\s+score -?\d", line)]
    assert len(hits) == 5, output[query:]


def test_cpu_threads_setting():
    """`cpu_threads: auto` keeps torch's count (the same low bits as before); a number is used as given."""
    assert cpu_threads("auto") is None
    assert cpu_threads(2) == 2 and cpu_threads("3") == 3
    for bad in (0, "0", "x", True, -1):
        with pytest.raises(ValueError, match="cpu_threads"):
            cpu_threads(bad)
    assert parse_config(load_config(None, []))[2].cpu_threads == "auto"
    assert cpu_threads(parse_config(load_config(None, ["--cpu_threads", "1"]))[2].cpu_threads) == 1
    with pytest.raises(ValueError, match="cpu_threads"):
        parse_config(load_config(None, ["--cpu_threads", "many"]))
