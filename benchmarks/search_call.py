"""The `call` section of `search_speed.py` (issue 24, item 5): one ``cl2cm-search INDEX "a red dog" --top 10
--exact`` call on the n-row index of the build_memory section, with the code of an earlier commit
(``--call-before``) and with this tree, interleaved in one run: wall and CPU time, peak RSS, page cache
cold (the index's and checkpoint's files evicted with ``posix_fadvise``; Python's own files stay cached)
and warm; the imports alone that the call cannot do without; and the loaded index's RSS
(`SearchIndex.load`, then one exact search) against the size of its embeddings, anonymous and
file-backed memory apart.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.search_build_memory import REPO, _checkpoint, _store, _timed

QUERY = "a red dog"
# The imports under a text search: with the index's query encoder (this tree) onnxruntime and tokenizers, and
# the search modules; without it (before) torch and transformers' model base.
FLOOR = ("import numpy, onnxruntime, tokenizers", "import cl2cm_hf.cli.search, cl2cm_hf.search.index",
         "import torch, transformers.modeling_utils")
_RSS_PROBE = """
import json, sys
def status():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))
    return {k: int(fields[k].split()[0]) * 1024 for k in ('VmRSS', 'RssAnon', 'RssFile', 'RssShmem')}
from cl2cm_hf.search.index import SearchIndex
out = {'imported': status()}
index = SearchIndex.load(sys.argv[1], use_faiss=False)
out['loaded'] = status()
index.search(sys.argv[2], 10, exact=True)
out['searched'] = status()
print(json.dumps(out))
"""


def _index(folder: Path, n: int) -> Path:
    """The build_memory section's index of n rows (built here when that section has not left one)."""
    out = folder / f"index-{n}"
    if not (out / "metadata.json").is_file():
        model, store = _checkpoint(folder / "model"), _store(folder / f"features-{n}", n)
        subprocess.run([sys.executable, "-m", "cl2cm_hf.cli.index", str(model), "--features", str(store), "--out",
                        str(out), "--faiss", "none", "--no-progress"], check=True, cwd=REPO)
    return out


def _code_at(ref: str, into: Path) -> Path:
    """The `cl2cm_hf` package as it was at git `ref`, unpacked into `into` (run from there)."""
    archive = into / "code.tar"
    with open(archive, "wb") as handle:
        subprocess.run(["git", "archive", ref, "cl2cm_hf"], cwd=REPO, stdout=handle, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def _evict(*folders: Path) -> None:
    """Drop the files of `folders` from the page cache (only theirs: other processes' pages stay)."""
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _run(code: Path, command: list[str]) -> dict:
    """`_timed` with `code` first on the import path."""
    return _timed(command, cwd=code, env={**os.environ, "PYTHONPATH": str(code)})


def call(folder: Path, n: int, before: str, repeats: int = 3, log=print) -> dict:
    """Cold and warm calls of both versions, `repeats` rounds interleaved, plus the floor and the RSS probe."""
    index = _index(folder, n)
    model = Path(json.loads((index / "metadata.json").read_text())["model"])
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": _code_at(before, Path(tmp)), "after": REPO}
        search = [sys.executable, "-m", "cl2cm_hf.cli.search", str(index), QUERY, "--top", "10", "--exact"]
        runs = {(version, cache): [] for version in versions for cache in ("cold", "warm")}
        for round_ in range(repeats):
            for version, code in versions.items():
                _evict(index, model)
                runs[version, "cold"].append(_run(code, search))
                runs[version, "warm"].append(_run(code, search))
                log(f"call round {round_} {version}: cold {runs[version, 'cold'][-1]['wall_s']:.2f} s, "
                    f"warm {runs[version, 'warm'][-1]['wall_s']:.2f} s")
        _check_same_hits([run["stdout"] for found in runs.values() for run in found])
        floor = {statement: min((_run(REPO, [sys.executable, "-c", statement]) for _ in range(repeats)), key=lambda r: r["cpu_s"])
                 for statement in FLOOR}
        rss = {version: json.loads(_run(code, [sys.executable, "-c", _RSS_PROBE, str(index), QUERY])["stdout"])
               for version, code in versions.items()}
    median = {key: {field: statistics.median(r[field] for r in found) for field in ("wall_s", "cpu_s", "peak_rss")}
              for key, found in runs.items()}
    return {"n": n, "before": before, "repeats": repeats, "calls": median, "floor": floor, "rss": rss,
            "embeddings_bytes": (index / "embeddings.npy").stat().st_size}


def _check_same_hits(outputs: list[str]) -> None:
    """Every call printed the same ranks and ids, and scores within the table's rounding (the query encoder's
    embedding is within ~1e-7 of the checkpoint's)."""
    def rows(output):
        lines = [line.split() for line in output.splitlines()[2:]]
        return [tuple(line[i] for i in (0, 2)) for line in lines], [float(line[1]) for line in lines]

    first_ids, first_scores = rows(outputs[0])
    for output in outputs[1:]:
        ids, scores = rows(output)
        if ids != first_ids or max(abs(a - b) for a, b in zip(scores, first_scores)) > 1.01e-4:
            raise RuntimeError(f"the calls printed different results:\n{outputs[0]}\n---\n{output}")


def report(r: dict) -> list[str]:
    mib = 2**20
    lines = [f"## One `cl2cm-search` call on the {r['n']:,}-row index (issue 24, item 5)", "",
             "| code | page cache | wall | CPU (user + sys) | peak RSS |", "|---|---|---|---|---|"]
    for (version, cache), m in r["calls"].items():
        label = f"before ({r['before']})" if version == "before" else "after (this commit)"
        lines.append(f"| {label} | {cache} | {m['wall_s']:.2f} s | {m['cpu_s']:.2f} s | {m['peak_rss'] / mib:.0f} MiB |")
    lines += ["", f"Medians of {r['repeats']} rounds, before and after interleaved; every call printed the same hits and "
              "scores to the table's 4 decimals (checked). Cold: the index's and the checkpoint's files evicted from the page cache "
              "(`posix_fadvise(DONTNEED)`) before the call; Python's and the libraries' files stay cached. Warm: the "
              "call right after.",
              "", "What the call cannot do without (the best of "
              f"{r['repeats']} `python -c` runs, this tree):", "", "| imports | wall | CPU |", "|---|---|---|"]
    for statement, f in r["floor"].items():
        lines.append(f"| `{statement}` | {f['wall_s']:.2f} s | {f['cpu_s']:.2f} s |")
    lines += ["", f"Memory of `SearchIndex.load` (the model included) and one exact search, in one process (embeddings "
              f"{r['embeddings_bytes'] / mib:.0f} MiB); anonymous memory is the process's own, file-backed memory is "
              "the memory-mapped files' pages (the embeddings, the Arrow columns, the libraries): page cache, shared "
              "and reclaimable:", "",
              "| code | process RSS after the search: anonymous / file-backed | grown by load + search: anonymous / "
              "file-backed | anonymous growth / embeddings |", "|---|---|---|---|"]
    for version, probe in r["rss"].items():
        after, grown = probe["searched"], {k: probe["searched"][k] - probe["imported"][k] for k in ("RssAnon", "RssFile")}
        lines.append(f"| {version} | {after['RssAnon'] / mib:.0f} / {after['RssFile'] / mib:.0f} MiB | "
                     f"{grown['RssAnon'] / mib:.0f} / {grown['RssFile'] / mib:.0f} MiB | "
                     f"{grown['RssAnon'] / r['embeddings_bytes']:.2f}x |")
    return lines
