"""The distributed build (issue 24, ``cl2cm-index --engine ray``) against the one-process build: n rows of 64-d
features through the demo-sized feature checkpoint of `search_build_memory`, each build a fresh index in its
own process; wall time, and CPU time of the whole process tree (the Ray head, raylet and workers included);
the ray build both starting its own local cluster and joining one already running.

    python benchmarks/search_ray.py [--rows 20000] [--workers 2] [--folder DIR]

Writes ``benchmarks/results/search_ray.md`` and checks that the two indexes are equal (ids, embeddings).
CPU time: `/usr/bin/time` misses Ray's workers (they are not waited for by the measured process), so the
tree is sampled with psutil every 0.2 s and each process's last reading summed: a lower bound, short of
at most 0.2 s of CPU per process at its exit."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.provenance import git_commit, machine  # noqa: E402
from benchmarks.search_build_memory import _checkpoint, _store  # noqa: E402

PORT = 6391  # the benchmark's own head node (not Ray's default 6379: another cluster may use it)


def _cpu(root: psutil.Process) -> dict:
    """(pid, start time) -> CPU seconds so far, for `root` and its descendants."""
    seen = {}
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return seen
    for proc in tree:
        try:
            times = proc.cpu_times()
            seen[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return seen


def _tree_timed(command: list[str], cluster: psutil.Process | None = None) -> dict:
    """Wall seconds and CPU seconds (user + system) of `command` and every process it starts, plus what
    the processes of a running `cluster` (``ray start``) spend meanwhile."""
    before = _cpu(cluster) if cluster else {}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, cpu = psutil.Process(process.pid), {}
    while process.poll() is None:
        cpu.update(_cpu(root))
        cpu.update(_cpu(cluster) if cluster else {})
        time.sleep(0.2)
    cpu.update(_cpu(cluster) if cluster else {})
    cpu = {key: value - before.get(key, 0.0) for key, value in cpu.items()}
    stderr = process.communicate()[1]
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr[-2000:]}")
    return {"wall_s": time.perf_counter() - started, "cpu_s": sum(cpu.values()), "processes": len(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder", help="where the checkpoint, store and indexes go (default: a temporary folder)")
    args = parser.parse_args()
    commit, load_start = git_commit(short=True), os.getloadavg()[0]
    # Loopback clusters only: without this, the driver joining the `ray start` head below was refused
    # (InvalidAuthToken) by Ray 2.60's default token auth; both clusters run with it off, alike.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        model, store = _checkpoint(folder / "model"), _store(folder / f"features-{args.rows}", args.rows)
        build = [sys.executable, "-m", "cl2cm_hf.cli.index", str(model), "--features", str(store), "--faiss", "none", "--no-progress"]
        runs, ray_args = {}, ["--engine", "ray", "--ray-workers", str(args.workers)]
        head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={PORT}", f"--num-cpus={args.workers}",
                                 "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                                                                 "RAY_TMPDIR": str(folder / "ray")})  # its files stay in the folder
        try:
            time.sleep(30)  # the head is up (its own start is not measured)
            for name, extra, cluster in (
                    ("one process", [], None),
                    (f"ray, local {args.workers} workers (the command starts the cluster)", ray_args, None),
                    (f"ray, {args.workers} workers of a running `ray start --head` cluster", [*ray_args, "--ray-address", f"127.0.0.1:{PORT}"],
                     psutil.Process(head.pid))):
                out = folder / f"index-{len(runs)}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                runs[name] = _tree_timed([*build, "--out", str(out), *extra], cluster)
                print(name, runs[name], flush=True)
        finally:
            head.terminate()  # `ray start --block` stops the cluster it started
            head.wait(60)
        from cl2cm_hf.search import SearchIndex

        one, *others = (SearchIndex.load(folder / f"index-{i}") for i in range(len(runs)))
        equal = all(list(one.ids) == list(other.ids) and np.array_equal(np.asarray(one.embeddings), np.asarray(other.embeddings))
                    for other in others)
    load_end = os.getloadavg()[0]
    lines = [f"# Distributed build (Ray Data) vs one process, {args.rows:,} rows", "",
             "| build | wall | CPU (process tree) | processes seen |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | {r['processes']} |" for name, r in runs.items()]
    lines += ["", f"Indexes equal (ids in order, embeddings bit for bit): **{equal}**.", "",
              f"`cl2cm-index MODEL --features STORE --out INDEX --faiss none --no-progress [--engine ray --ray-workers "
              f"{args.workers}]` (default --chunk-size 1024, --batch-size 64), MODEL the features -> 64-d checkpoint of "
              "`benchmarks/search_build_memory.py`, STORE random 64-d rows. The ray build starts its own local cluster "
              "(included in its time); the third row joins a head node started before the timing (`ray start --head --block "
              f"--port {PORT} --num-cpus {args.workers}`; its start is not counted, its processes' CPU during the build is). "
              "CPU: the process trees sampled every 0.2 s (a lower bound).", "",
              f"Run: `python benchmarks/search_ray.py --rows {args.rows} --workers {args.workers}` at commit {commit}; "
              f"{machine(torch)}; load average (1 min) at start {load_start:.2f}, at end {load_end:.2f}."]
    (REPO / "benchmarks" / "results" / "search_ray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
