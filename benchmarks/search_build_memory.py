"""The build-memory and one-call sections of `search_speed.py` (issue 24): ``cl2cm-index --features`` over
n rows of 64-d features through a demo-sized feature checkpoint (features -> 64-d, as the demo's), peak
RSS of the build process (``/usr/bin/time -v``) for each n, and one ``cl2cm-search`` call on the index
(wall time, peak RSS) against the size of its embeddings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 64


def _checkpoint(folder: Path) -> Path:
    """A features -> 64-d CL2CM checkpoint (the demo's shape), random weights."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_wordpiece_tokenizer, features_config

    from cl2cm_hf import CL2CMCrossModalModel, build_processor

    if not (folder / "config.json").exists():
        config = features_config(projection_dim=DIM, visual_feature_dim=DIM, visual_hidden_size=128, visual_num_heads=4)
        CL2CMCrossModalModel(config).save_pretrained(folder)
        build_processor(build_wordpiece_tokenizer(), "").save_pretrained(folder)
    return folder


def _store(folder: Path, n: int) -> Path:
    """A feature store of n random 64-d rows, written in one go (outside the measured process)."""
    from cl2cm_hf.data import VisualFeatureStore

    if not (folder / "ids.json").exists():
        rng = np.random.default_rng(0)
        VisualFeatureStore.from_arrays([f"item{i:09d}" for i in range(n)], rng.standard_normal((n, DIM), dtype=np.float32)).save(folder)
    return folder


def _timed(command: list[str], cwd: Path = REPO, env: dict | None = None) -> dict:
    """Wall seconds, CPU seconds, peak RSS (bytes) and stdout of `command` under ``/usr/bin/time -v``."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    fields = dict(line.strip().split(": ", 1) for line in done.stderr.splitlines() if ": " in line.strip())
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return {"wall_s": time.perf_counter() - started, "cpu_s": cpu, "peak_rss": int(fields["Maximum resident set size (kbytes)"]) * 1024,
            "stdout": done.stdout}


def build_memory(folder: Path, counts: list[int], log=print) -> list[dict]:
    """One ``cl2cm-index --faiss none`` build per n (a fresh index each), then one ``cl2cm-search`` call."""
    model = _checkpoint(folder / "model")
    runs = []
    for n in counts:
        store, out = _store(folder / f"features-{n}", n), folder / f"index-{n}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        build = _timed([sys.executable, "-m", "cl2cm_hf.cli.index", str(model), "--features", str(store), "--out", str(out),
                        "--faiss", "none", "--no-progress"])
        log(f"build n={n}: {build}")
        search = [sys.executable, "-m", "cl2cm_hf.cli.search", str(out), "a red dog", "--top", "10", "--exact"]
        _timed(search)  # the first call after a build pays for the page cache
        one = _timed(search)
        log(f"search n={n}: {one}")
        runs.append({"n": n, "build": build, "search": one, "embeddings_bytes": (out / "embeddings.npy").stat().st_size})
        (folder / f"memory-n{n}.json").write_text(json.dumps(runs[-1]))
    return runs


def report(runs: list[dict]) -> list[str]:
    lines = ["## Build memory and one `cl2cm-search` call (issue 24)", "",
             "| rows (64-d features) | build wall / CPU | build peak RSS | embeddings | one cl2cm-search call (wall / CPU) | "
             "its peak RSS |", "|---|---|---|---|---|---|"]
    for r in runs:
        b, s = r["build"], r["search"]
        lines.append(f"| {r['n']:,} | {b['wall_s']:.0f} s / {b['cpu_s']:.0f} s | {b['peak_rss'] / 2**20:.0f} MiB | "
                     f"{r['embeddings_bytes'] / 2**20:.0f} MiB | {s['wall_s']:.2f} s / {s['cpu_s']:.2f} s | "
                     f"{s['peak_rss'] / 2**20:.0f} MiB |")
    lines += ["", "`cl2cm-index MODEL --features STORE --out INDEX --faiss none` in its own process (`/usr/bin/time -v`), "
              "MODEL a features -> 64-d checkpoint of the demo's shape; then `cl2cm-search INDEX \"a red dog\" --top 10 "
              "--exact` (the second call: the page cache warm). The build goes through the items 65,536 at a time (items and "
              "cache keys in a temporary sqlite table, the store's ids and rows read a block at a time, `data/` and "
              "`embeddings.npy` written block by block, one shard held at a time): its peak RSS should not grow with n "
              "(`docs/search_scale.md`, Build memory)."]
    return lines
