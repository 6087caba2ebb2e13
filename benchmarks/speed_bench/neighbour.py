"""Section `neighbour`: the CPU thread policy next to one busy process against alone: a demo-size
stage-2 step under each policy (each in its own process, started as
`python -m benchmarks.speed_bench.neighbour PID CPU_THREADS REPEATS`), and the wall time of a shrunk
(or the full) `make demo` under the chosen policy and the old default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.provenance import REPO
from benchmarks.speed_bench.step import stage2_case, stage2_step
from benchmarks.speed_bench.timing import med, median_ratio, row

DEMO_STEP = "demo recipe towers (BERT 96x2, batch 64)"
# name: (OMP_WAIT_POLICY, cpu_threads). OMP_WAIT_POLICY is read once when torch starts OpenMP, so each
# policy runs in its own process; None leaves the variable unset (libgomp spins before it sleeps).
POLICIES = {
    "chosen (trainer/run.py): cpu_threads auto, OMP_WAIT_POLICY=PASSIVE": ("PASSIVE", "auto"),
    "old default: cpu_threads auto, no passive wait": (None, "auto"),
    "cpu_threads 1, OMP_WAIT_POLICY=PASSIVE": ("PASSIVE", "1"),
}
SHRUNK_DEMO = ["--demo_items", "128", "--demo_validation_items", "32", "--demo_test_items", "32", "--text_num_layers", "1",
               "--cl_num_train_epochs", "1", "--num_train_epochs", "1"]
# The old default's demo: the library's `main` without trainer/run.py's set-up (what `cl2cm-train` runs).
LIBRARY_MAIN = "import sys; from cl2cm_hf.cli.train import main; sys.exit(main(sys.argv[1:]))"


def policy_env(wait_policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"})
    return env if wait_policy is None else {**env, "OMP_WAIT_POLICY": wait_policy}


def set_neighbour(pid: int, busy: bool) -> None:
    """Let the neighbour spin (SIGCONT) or stop it (SIGSTOP); then give the scheduler a moment."""
    os.kill(pid, signal.SIGCONT if busy else signal.SIGSTOP)
    time.sleep(0.3)


def neighbour_worker(pid: int, setting: str, repeats: int) -> None:
    """In a process started with the policy's environment: the demo-size stage-2 step (live teacher,
    as in the demo recipe) alone and next to the busy neighbour `pid`, interleaved; one JSON line."""
    from cl2cm_hf.torch_state import cpu_threads, torch_threads

    with torch_threads(cpu_threads(setting)):
        teacher, student, inputs, _ = stage2_case(DEMO_STEP)
        step = stage2_step(student, 1.0, teacher_model=teacher)
        set_neighbour(pid, False)
        step(inputs)  # warm-up
        times = {"alone": [], "busy": []}
        for r in range(repeats):
            for condition in (("alone", "busy") if r % 2 == 0 else ("busy", "alone")):
                set_neighbour(pid, condition == "busy")
                start = time.perf_counter()
                step(inputs)
                times[condition].append(time.perf_counter() - start)
        set_neighbour(pid, False)
        print(json.dumps({"threads": torch.get_num_threads(), **times}), flush=True)


def bench_neighbour(args) -> None:
    """Each policy's demo-size stage-2 step and shrunk (or full) `make demo` run, alone and next to one
    busy process (a Python loop on one core, stopped with SIGSTOP while "alone")."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    auto_threads = None
    try:
        set_neighbour(neighbour.pid, False)
        repeats = 3 if args.quick else max(args.repeats, 7)
        for name, (wait_policy, setting) in POLICIES.items():
            out = subprocess.run(
                [sys.executable, "-m", __name__, str(neighbour.pid), setting, str(repeats)],
                env=policy_env(wait_policy), capture_output=True, text=True, check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            auto_threads = result["threads"] if setting == "auto" else auto_threads
            ratio = median_ratio(result["busy"], result["alone"])
            row("neighbour", f"{DEMO_STEP} stage-2 step, {name}: busy neighbour / alone",
                f"{med(result['busy']) * 1e3:.0f} ms", f"alone {med(result['alone']) * 1e3:.0f} ms", ratio,
                "<= 2x", ratio <= 2, result["threads"],
                f"{repeats} interleaved repeats; range busy {min(result['busy']) * 1e3:.0f}-{max(result['busy']) * 1e3:.0f} ms")

        demo = [str(REPO / "trainer" / "configs" / "demo.yaml"), *([] if args.full_demo else SHRUNK_DEMO)]
        what = "`make demo`" if args.full_demo else "`make demo` shrunk (" + " ".join(SHRUNK_DEMO) + ")"
        runs = {  # name: (command, OMP_WAIT_POLICY)
            "chosen (trainer/run.py)": ([sys.executable, str(REPO / "trainer" / "run.py")], None),
            "old default (library main, as cl2cm-train)": ([sys.executable, "-c", LIBRARY_MAIN], None),
        }
        walls = {name: {"alone": [], "busy": []} for name in runs}
        for r in range(1 if args.quick or args.full_demo else 2):
            for busy in ((False, True) if r % 2 == 0 else (True, False)):
                for name, (command, wait_policy) in runs.items():
                    set_neighbour(neighbour.pid, busy)
                    with tempfile.TemporaryDirectory() as out:
                        start = time.perf_counter()
                        done = subprocess.run([*command, *demo, "--output_dir", out], env=policy_env(wait_policy),
                                              capture_output=True, text=True, cwd=REPO)  # as `make demo`
                        if done.returncode:
                            raise RuntimeError(f"demo run failed ({name}):\n{done.stderr[-3000:]}")
                        walls[name]["busy" if busy else "alone"].append(time.perf_counter() - start)
        set_neighbour(neighbour.pid, False)
        for name, wall in walls.items():
            ratio = median_ratio(wall["busy"], wall["alone"])
            row("neighbour", f"{what} wall time, {name}: busy neighbour / alone", f"{med(wall['busy']):.1f} s",
                f"alone {med(wall['alone']):.1f} s", ratio, None, None, auto_threads,
                f"{len(wall['alone'])} run(s) each; cpu_threads auto")
    finally:
        neighbour.kill()
        neighbour.wait()



if __name__ == "__main__":  # a worker of `bench_neighbour`: PID CPU_THREADS REPEATS
    neighbour_worker(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
