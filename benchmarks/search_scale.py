"""The 10M-item benchmark of `search_speed.py --only scale` (issue 24): synthetic clustered embeddings
written in chunks to disk as float16 shards, the exact top-10 of 1000 queries computed chunk by chunk,
then the compressed index (`cl2cm_hf.search.ann`) built from the shards, served memory-mapped and
measured against that exact answer. Everything is on disk under ``--scale-dir`` and reused by a rerun
(the data and the exact answer take minutes at 10M).

The data: 4096 cluster centres in 256-d; an item is its centre plus a 32-d Gaussian in a shared random
subspace (scale 0.12) plus isotropic noise (0.01), L2-normalised: clustered, with a low intrinsic
dimension, as model embeddings are. The noise is calibrated (`search_calibration.py`): at 0.01 a
cluster at 10M density has the 10-NN contrast and local intrinsic dimension of real e5 / ResNet-50
embeddings (d1/d10 0.90, LID 23.5 vs 0.87-0.90, 20-22); at 0.02 its LID was 29. Pure isotropic noise
around centres (the `exact` section's gallery) has no near neighbours to find at 10M and is no test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SHARD_ROWS = 1_000_000
QUERIES = 1000
K = 10
NOISE = 0.01  # isotropic noise per dimension: calibrated on real embeddings (docs/search_scale.md)
BYTES_PER_ITEM = 300  # the RAM budget given to build_ann: the 4 GB serving goal at 10M, less the process


def _items(rng, centers, basis, count: int) -> np.ndarray:
    d = centers.shape[1]
    block = centers[rng.integers(0, len(centers), count)]
    block += 0.12 * rng.standard_normal((count, basis.shape[0]), dtype=np.float32) @ basis
    block += NOISE * rng.standard_normal((count, d), dtype=np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def make_data(folder: Path, n: int, d: int, seed: int = 0, log=print) -> tuple[list[Path], np.ndarray]:
    """Float16 ``shard-XXXX.npy`` files of `n` items (in ``SHARD_ROWS`` rows) and ``queries.npy``; kept when present."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4096, d), dtype=np.float32) / np.sqrt(d)
    basis = rng.standard_normal((32, d), dtype=np.float32) / np.sqrt(d)
    queries_file = folder / "queries.npy"
    if not queries_file.exists():
        np.save(queries_file, _items(rng, centers, basis, QUERIES).astype(np.float32))
    paths = []
    for s, a in enumerate(range(0, n, SHARD_ROWS)):
        path = folder / f"shard-{s:04d}.npy"
        paths.append(path)
        if path.exists():
            continue
        block_rng = np.random.default_rng([seed, s])
        block = np.empty((min(SHARD_ROWS, n - a), d), np.float16)
        for b in range(0, len(block), 250_000):  # bounded temporaries
            block[b : b + 250_000] = _items(block_rng, centers, basis, len(block[b : b + 250_000]))
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, block)
        tmp.rename(path)
        log(f"data: wrote {path.name} ({a + len(block):,} / {n:,} rows)")
    return paths, np.load(queries_file)


def shard_arrays(paths: list[Path]) -> list[np.ndarray]:
    return [np.load(path, mmap_mode="r") for path in paths]


def exact_top(folder: Path, shards: list[np.ndarray], queries: np.ndarray, log=print) -> np.ndarray:
    """``(queries, K)`` global row numbers of the exact top-K (float32 scores of the float16 rows), cached:
    `cl2cm_hf.search.ann.exact_top` over the shards, block by block."""
    from cl2cm_hf.search.ann import ShardRows
    from cl2cm_hf.search.ann import exact_top as exact

    path = folder / f"exact_top{K}_n{sum(len(s) for s in shards)}.npy"
    if path.exists():
        return np.load(path)
    log(f"exact: top {K} of {len(queries)} queries over {len(shards)} shards")
    best = exact(ShardRows(shards), queries, K)
    np.save(path, best)
    return best


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident bytes: VmRSS (all), RssAnon (its own memory) or RssFile (mapped file pages,
    page cache the kernel can drop: the memory-mapped index and shards)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def serve_queries(index, queries: np.ndarray, truth: np.ndarray, rerank: int) -> dict:
    """One query at a time, as a user would: p50/p95 latency, recall@10 against `truth`, and RSS after."""
    times, found = [], 0
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, hits = index.search(q[None], K, rerank=rerank)
        times.append(time.perf_counter() - t)
        found += np.intersect1d(hits[0], truth[i]).size
    times.sort()
    return {"p50_ms": 1000 * times[len(times) // 2], "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "recall@10": found / (K * len(times)), "rss": rss_bytes()}


def scale(folder: Path, n: int, d: int, log=print) -> dict:
    """Build the compressed index from the float16 shards under a RAM budget, serve it memory-mapped,
    and measure latency and recall@10 against the exact top-10 (with and without re-ranking)."""
    from cl2cm_hf.search.ann import AnnIndex, ShardRows, build_ann

    done = folder / f"result-n{n}.json"
    if done.exists():  # measured by an earlier run of the same data: kept (delete the file to measure again)
        return json.loads(done.read_text())
    started = time.perf_counter()
    paths, queries = make_data(folder, n, d, log=log)
    data_s = time.perf_counter() - started
    shards = shard_arrays(paths)
    started = time.perf_counter()
    truth = exact_top(folder, shards, queries, log=log)
    exact_s = time.perf_counter() - started
    rows = ShardRows(shards)
    budget = BYTES_PER_ITEM * n
    out = folder / f"ann-n{n}"
    started = time.perf_counter()
    info = build_ann(rows, out, budget, log=log)  # nprobe picked on held-out gallery rows; measured below on new queries
    build_s = time.perf_counter() - started
    build_rss = rss_bytes()
    del rows, shards
    index = AnnIndex.load(out, ShardRows(shard_arrays(paths)))
    base = rss_bytes()
    results = {"n": n, "d": d, "budget": budget, "data_s": data_s, "exact_s": exact_s, "build_s": build_s, "build_rss": build_rss,
               "index_bytes": sum(p.stat().st_size for p in out.iterdir()), "info": info}
    for name, rerank in (("rerank0", 0), ("rerank", info["rerank"])):
        results[name] = serve_queries(index, queries, truth, rerank)
        log(f"serve rerank={rerank}: {results[name]}")
    results["serve_rss_before_queries"] = base
    results["sweep"] = sweep(folder, n, d, [(p, info["rerank"]) for p in info["nprobe_ladder"]])
    (folder / f"result-n{n}.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def report(runs: list[dict]) -> list[str]:
    """The section's markdown: one row per n measured, then the extrapolation table."""
    lines = ["## Compressed index at scale (issue 24): IVF-PQ from float16 shards, re-ranked from the shards", "",
             "| n x d | index (factory, nprobe picked at build) | build | index bytes | serving RSS | p50 / p95 | recall@10 | "
             "p50 / p95 re-ranked top-100 | recall@10 re-ranked |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        a, b, info = r["rerank0"], r["rerank"], r["info"]
        lines.append(f"| {r['n']:,} x {r['d']} | `{info['factory']}`, {info['nprobe']} | {r['build_s']:.0f} s | "
                     f"{_gb(r['index_bytes'])} | {_gb(b['rss'])} | {a['p50_ms']:.1f} / {a['p95_ms']:.1f} ms | "
                     f"{a['recall@10']:.3f} | {b['p50_ms']:.1f} / {b['p95_ms']:.1f} ms | **{b['recall@10']:.3f}** |")
    for r in runs:
        info = r["info"]
        curve = ", ".join(f"{p}: {v:.3f}" for p, v in info["nprobe_recall@10_rerank"].items())
        lines += ["", f"nprobe picked by `build_ann` on the {r['n']:,}-item index ({info['recall_queries']} gallery rows held "
                  f"out of training, own row left out; re-ranked recall@10 by nprobe, smallest first, until "
                  f"{info['target_recall']}): {curve}; at the pick {info['recall@10']:.3f} without re-ranking."]
        if r.get("sweep"):
            lines += ["", f"Serving settings on the {r['n']:,}-item index (`sweep`: nprobe lists probed, candidates re-ranked "
                      "exactly from the float16 rows):", "", "| nprobe | re-ranked | p50 | p95 | recall@10 |", "|---|---|---|---|---|"]
            lines += [f"| {s['nprobe']} | {s['rerank']} | {s['p50_ms']:.1f} ms | {s['p95_ms']:.1f} ms | {s['recall@10']:.3f} |"
                      for s in r["sweep"]]
        if r.get("measured"):
            lines += ["", f"The {r['n']:,} row: measured {r['measured']}."]
    lines += ["", f"Data: {__doc__.split('The data: ')[1].split(chr(10) + chr(10))[0].replace(chr(10), ' ')}",
              f"Queries: {QUERIES} new items of the same distribution, one at a time; the exact top-{K} computed chunk by "
              "chunk over the float16 shards. Budget given to `build_ann`: "
              f"{BYTES_PER_ITEM} bytes an item. Build time includes the held-out recall measurement that picks nprobe (an "
              "exact pass over all rows). Serving RSS is the whole benchmark process (torch and faiss included) after "
              "the queries, the index read with `IO_FLAG_MMAP` (fast-scan codes are read into RAM all the same) and the "
              "shards memory-mapped for re-ranking. Goal: recall@10 "
              ">= 0.9 at p50 <= 20 ms, serving RSS <= 4 GB.", ""]
    if runs:
        lines += extrapolate(runs[-1])
    return lines


def extrapolate(r: dict) -> list[str]:
    """Memory, disk and build time at 100M and 1B, scaled linearly from the largest run."""
    info, n, d = r["info"], r["n"], r["d"]
    per_item_build = r["build_s"] / n
    rows = ["| items | ANN RAM (codes + ids + centroids) | float16 embeddings on disk (re-rank) | float32 `embeddings.npy` | "
            "shards (64 GB RAM machines) | build hours, 1 worker (2 cores) | build hours per worker, 1 worker a shard |",
            "|---|---|---|---|---|---|---|"]
    for items in (100_000_000, 1_000_000_000):
        ram = items * (info["code_bytes"] + 8) + 4 * d * 2 ** round(np.log2(np.sqrt(items)))
        shards = max(1, int(np.ceil(ram / 48e9)))
        rows.append(f"| {items:,} | {_gb(ram)} | {_gb(items * d * 2)} | {_gb(items * d * 4)} | {shards} | "
                    f"{per_item_build * items / 3600:.1f} | {per_item_build * items / shards / 3600:.1f} |")
    return ["### Extrapolation", "", *rows, "",
            f"Assumptions: build time linear in n from the {n:,}-item run ({per_item_build * 1e6:.0f} s a million items, "
            "recall measurement included): with nlist ~ sqrt(n) and 40 training points a list, k-means costs "
            "40 nlist^2 ~ n distance computations, adding is n HNSW look-ups, the held-out exact pass is n dot products; "
            f"the same codes ({info['code_bytes']} bytes + 8 of id a vector, `{info['factory'].split(',')[1]}`); a 64 GB machine "
            "serves 48 GB of codes; the float16 rows for re-ranking are read from disk (100 random rows a query: page "
            "cache or SSD), not held in RAM; encoding the items through the model is not included (the model's forward: "
            "see the throughput section). Not measured: nprobe at 100M / 1B (lists grow as sqrt(n), so the fraction of "
            "lists to probe for the same recall should fall, the codes scanned a query grow as sqrt(n)); `build_ann` "
            "measures and picks it at build time. Workers build disjoint shards in parallel (`cl2cm-shards` serves them "
            "as one index), so wall hours divide by the number of workers."]


def sweep(folder: Path, n: int, d: int, settings) -> list[dict]:
    """Serving settings (nprobe, re-ranked candidates) on the index an earlier `scale` run built:
    p50/p95 and recall@10 of each, for the trade-off table."""
    from cl2cm_hf.search.ann import AnnIndex, ShardRows

    paths, queries = make_data(folder, n, d)
    truth = exact_top(folder, shard_arrays(paths), queries)
    out = []
    for nprobe, rerank in settings:
        index = AnnIndex.load(folder / f"ann-n{n}", ShardRows(shard_arrays(paths)), nprobe=nprobe)
        out.append({"nprobe": nprobe, "rerank": rerank, **serve_queries(index, queries, truth, rerank)})
        print(out[-1], flush=True)
    return out


def serve_fresh(folder: Path, n: int, d: int) -> dict:
    """Serving alone, in a fresh process, on the index an earlier `scale` run built (its stored nprobe and
    re-ranking): p50/p95, recall@10 and RSS split into the process's own memory and mapped file pages."""
    from cl2cm_hf.search.ann import AnnIndex, ShardRows

    paths, queries = make_data(folder, n, d)
    truth = exact_top(folder, shard_arrays(paths), queries)
    rerank = json.loads((folder / f"result-n{n}.json").read_text())["info"]["rerank"]
    index = AnnIndex.load(folder / f"ann-n{n}", ShardRows(shard_arrays(paths)))
    before = {f: rss_bytes(f) for f in ("VmRSS", "RssAnon", "RssFile")}
    result = serve_queries(index, queries, truth, rerank)
    return {"rerank": rerank, **result, "before": before, "after": {f: rss_bytes(f) for f in ("VmRSS", "RssAnon", "RssFile")}}


if __name__ == "__main__":  # python benchmarks/search_scale.py DIR N: serve_fresh, printed as JSON
    import sys

    print(json.dumps(serve_fresh(Path(sys.argv[1]), int(sys.argv[2]), 256), indent=1))
