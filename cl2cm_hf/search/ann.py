"""A compressed approximate index under a RAM budget (``cl2cm-index --faiss ivfpq --ann-budget-mb``),
built from embeddings on disk without holding them in memory, served with re-ranking from them.

The choice rule (`choose_factory`, `choose_nprobe`), for n vectors of dim d and a budget of B bytes for the
served index:

* ``nlist`` = the power of two nearest sqrt(n), at most n / 39 (faiss wants >= 39 training points per
  list); the coarse quantizer is HNSW32 over the centroids from 1024 lists on (assigning 10M vectors
  to flat centroids is the slowest part of a build otherwise). Not 4 sqrt(n): k-means costs
  nlist x training points = 40 nlist^2 distance computations, 16x more, over an hour at 10M on a 2-core
  build worker; the recall is bought with nprobe instead.
* the codes: ``Flat`` (4d bytes a vector, exact) for up to 65,536 vectors when n (4d + 8) fits B, else
  4-bit fast-scan product quantization ``PQmx4fs`` (m / 2 bytes a vector) with the largest m of d/2,
  d/4, ... (>= 8) that fits: every search re-ranks its top ``rerank`` (100) candidates exactly from the
  stored embeddings, so the codes only have to put the true top-10 among 100, and fast-scan (SIMD
  look-ups in registers) scans a list several times faster than 8-bit PQ or SQ8 codes (measured:
  docs/search_scale.md). 8 bytes a vector are the ids, lists are padded to blocks of 32 codes, the
  centroids (4 d nlist) come on top. A budget below the smallest is refused with the one that works.
* ``nprobe``: measured, not guessed. 1000 rows held out of the training sample are searched at
  nprobe = nlist/256, /128, ... /8, smallest first; the first whose re-ranked recall@10 (against the
  exact top-10 over all rows, the query's own row left out) reaches 0.95 is stored in the index, else
  the best one measured. The 0.05 margin is for queries that are not gallery rows.

This is faiss's index factory with the rule written down, rather than autofaiss: autofaiss pulls in
fire, pyarrow dataset readers and its own embedding-reader stack, builds only from its own file layouts,
and on this scale (up to ~1e9 vectors a machine) it picks the same IVF-HNSW-PQ family.

Training uses a seeded sample (40 points a list, and at least 2^16 where there are that many);
vectors are then added block by block from the rows, so the build holds the sample, one block and the
growing compressed index (the budget), never the float embeddings. The metadata records the recall@10
at each nprobe tried and, at the chosen one, without and with re-ranking.
``rerank`` re-scores the top candidates exactly from the stored embeddings (float32 of what is on disk),
read with `os.pread` so that serving does not map the embeddings into its RSS. Fast-scan codes are read
into RAM (faiss memory-maps only plain inverted lists): the budget is what they take.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval.faiss_import import import_faiss

ANN_FILE = "ann.index"
BLOCK_ROWS = 1 << 18  # rows added (and read for exact search) at a time: 256 MiB of float32 at d=256
ID_BYTES = 8
FLAT_ROWS = 1 << 16  # up to here (and within the budget) the vectors are kept as float32: exact, and as fast as codes
TARGET_RECALL = 0.95  # re-ranked recall@10 on held-out rows that picks nprobe (margin over the 0.9 goal on new queries)
RERANK = 100  # candidates re-scored exactly from the stored embeddings (10 k at k = 10)


class ShardRows:
    """Several ``(n_i, d)`` arrays (memory-mapped shards, any float dtype) read as one ``(n, d)`` float32 gallery."""

    def __init__(self, arrays):
        self.arrays = [a for a in arrays if len(a)]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.n = int(self.starts[-1])
        self.d = int(self.arrays[0].shape[1]) if self.arrays else 0

    def __len__(self) -> int:
        return self.n

    def blocks(self, rows: int = BLOCK_ROWS):
        """``(start, float32 block)`` in order, at most `rows` rows each, never crossing a shard."""
        for start, array in zip(self.starts, self.arrays):
            for a in range(0, len(array), rows):
                yield int(start + a), np.ascontiguousarray(array[a : a + rows], dtype=np.float32)

    def take(self, rows) -> np.ndarray:
        """Float32 rows by global row number (any order)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.d), np.float32)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            mask = shard == s
            local = rows[mask] - self.starts[s]
            order = np.argsort(local)  # sorted reads of a memmap
            out[np.flatnonzero(mask)[order]] = _read_rows(self.arrays[s], local[order])
        return out


def _read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``; from a memory-mapped ``.npy`` by `os.pread`, not through the mapping: a page
    touched through a mapping (and the pages faulted in around it) stays in the process's RSS, so
    re-ranking 100 random rows a query would map most of the file into a long-running server's RSS."""
    if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous and array.ndim == 2):
        return array[rows]
    size = array.shape[1] * array.itemsize
    fd = os.open(array.filename, os.O_RDONLY)
    try:
        data = b"".join(os.pread(fd, size, array.offset + int(r) * size) for r in rows)
    finally:
        os.close(fd)
    return np.frombuffer(data, array.dtype).reshape(len(rows), array.shape[1])


def choose_factory(n: int, d: int, budget: int) -> dict:
    """The factory string, nlist, code bytes and nprobe ladder the rule above picks (see the module docstring)."""
    nlist = max(1, min(2 ** round(math.log2(max(math.sqrt(n), 1))), n // 39 or 1))
    centroids = 4 * d * nlist
    if n <= FLAT_ROWS and n * (4 * d + ID_BYTES) + centroids <= budget:
        code, code_bytes = "Flat", 4 * d
    else:
        fits = [m for m in _halvings(d // 2) if d % m == 0 and _fast_scan_bytes(n, m, nlist) + centroids <= budget]
        if not fits:
            need = _fast_scan_bytes(n, min(_halvings(d // 2)), nlist) + centroids
            raise CL2CMError(f"an ANN budget of {budget / 2**20:.0f} MiB is too small for {n:,} vectors of dim {d}: "
                             f"the smallest index (PQ{min(_halvings(d // 2))}x4fs) needs {math.ceil(need / 2**20)} MiB")
        code, code_bytes = f"PQ{fits[0]}x4fs", fits[0] // 2
    quantizer = "_HNSW32" if nlist >= 1024 else ""
    expected = n * (4 * d + ID_BYTES) if code == "Flat" else _fast_scan_bytes(n, 2 * code_bytes, nlist)
    return {"factory": f"IVF{nlist}{quantizer},{code}", "nlist": nlist, "nprobe_ladder": nprobe_ladder(nlist),
            "code_bytes": code_bytes, "budget_bytes": int(budget), "expected_bytes": int(expected + centroids)}


def _halvings(m: int) -> list[int]:
    """m, m/2, m/4, ... down to 8 (or m itself when it is smaller): the sub-quantizer counts tried, largest first."""
    out = [max(m, 1)]
    while out[-1] % 2 == 0 and out[-1] // 2 >= 8:
        out.append(out[-1] // 2)
    return out


def _fast_scan_bytes(n: int, m: int, nlist: int) -> int:
    """4-bit codes (m / 2 bytes) and ids of n vectors, each list padded to blocks of 32 codes."""
    return n * (m // 2 + ID_BYTES) + nlist * 32 * (m // 2 + ID_BYTES)


def nprobe_ladder(nlist: int) -> list[int]:
    """The nprobe values tried at build time, smallest first: doubling from nlist / 256 to nlist / 8
    (from 1, and up to 8 lists where there are that many: a small index is cheap to scan)."""
    top, out = max(nlist // 8, min(nlist, 8)), [max(1, nlist // 256)]
    while out[-1] * 2 <= top:
        out.append(out[-1] * 2)
    return out


def choose_nprobe(recalls: dict[int, float], target: float = TARGET_RECALL) -> int:
    """The smallest nprobe whose measured (re-ranked) recall reaches `target`, else the one with the best recall."""
    reached = [p for p, r in recalls.items() if r >= target]
    return min(reached) if reached else max(recalls, key=lambda p: (recalls[p], -p))


def exact_top(rows: ShardRows, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-`k` of each query over all rows, read block by block (`topk` per block:
    many queries, the build's recall measurement)."""
    import torch

    from cl2cm_hf.retrieval.search import topk

    best_s = torch.full((len(queries), k), -np.inf)
    best_i = torch.zeros((len(queries), k), dtype=torch.int64)
    for start, block in rows.blocks():
        scores, found = topk(queries, block, min(k, len(block)))
        merged, order = torch.topk(torch.cat([best_s, scores], 1), k, dim=1)
        best_i = torch.gather(torch.cat([best_i, found + start], 1), 1, order)
        best_s = merged
    return best_i.numpy()


def build_ann(rows: ShardRows, out: Path, budget: int, *, recall_queries: int = 1000, seed: int = 0, log=None) -> dict:
    """Train the chosen index on a sample of `rows`, add them block by block, pick nprobe on held-out rows,
    write ``out/ann.index`` and return its metadata: kind, factory, parameters, bytes and the measured recall@10."""
    faiss = import_faiss()
    n, d = rows.n, rows.d
    if n == 0:
        raise CL2CMError("an ANN index needs at least one vector")
    choice = choose_factory(n, d, budget)
    index = faiss.index_factory(d, choice["factory"], faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    size = min(n, max(40 * choice["nlist"], 1 << 16))
    train = np.sort(rng.choice(n, size=size, replace=False))
    if log:
        log(f"ann: {choice['factory']}, training on {size:,} rows")
    index.train(rows.take(train))
    for start, block in rows.blocks():
        index.add(block)
        if log:
            log(f"ann: added {start + len(block):,} / {n:,}")
    rerank = min(RERANK, n)
    info = {"type": "ivfpq", "file": ANN_FILE, **choice, "train_rows": size, "rerank": rerank,
            "nprobe": choice["nprobe_ladder"][len(choice["nprobe_ladder"]) // 2]}  # without a measurement: the middle
    if recall_queries and n > 1:
        info.update(_measured_recall(AnnIndex(index, rows), rows, train, recall_queries, rerank, rng, log))
    faiss.extract_index_ivf(index).nprobe = info["nprobe"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / ANN_FILE))
    return {**info, "bytes": (out / ANN_FILE).stat().st_size}


def _measured_recall(served: AnnIndex, rows: ShardRows, train: np.ndarray, count: int, rerank: int, rng, log=None) -> dict:
    """recall@10 on up to `count` rows held out of training (each query's own row left out of both answers)
    for each nprobe of the ladder, smallest first, until the re-ranked recall reaches the target; the chosen
    nprobe and its recall without and with re-ranking."""
    faiss = import_faiss()
    n = rows.n
    held_out = np.setdiff1d(np.arange(n), train, assume_unique=True)
    if len(held_out) == 0:
        held_out = np.arange(n)
    query_rows = np.sort(rng.choice(held_out, size=min(count, len(held_out)), replace=False))
    queries = rows.take(query_rows)
    k = min(10, n - 1) if n > 1 else 1
    truth = _others(exact_top(rows, queries, k + 1), query_rows, k)
    ivf, curve = faiss.extract_index_ivf(served.index), {}
    for nprobe in nprobe_ladder(ivf.nlist):
        ivf.nprobe = nprobe
        curve[nprobe] = _recall(_others(served.search(queries, k + 1, rerank=rerank)[1], query_rows, k), truth)
        if log:
            log(f"ann: nprobe {nprobe}: held-out recall@{k} re-ranked {curve[nprobe]:.3f}")
        if curve[nprobe] >= TARGET_RECALL:
            break
    ivf.nprobe = nprobe = choose_nprobe(curve)
    return {"nprobe": nprobe, "recall@10": _recall(_others(served.search(queries, k + 1)[1], query_rows, k), truth),
            "recall@10_rerank": curve[nprobe], "nprobe_recall@10_rerank": {str(p): r for p, r in curve.items()},
            "target_recall": TARGET_RECALL, "recall_k": k, "recall_queries": len(queries),
            "recall_query_source": "gallery rows held out of the training sample (seeded), vs exact top-k over all rows, "
                                   "the query's own row left out of both"}


def _others(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first `k` rows of each answer that are not the query's own row."""
    return np.stack([f[f != o][:k] for f, o in zip(found, own)])


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(sum(np.intersect1d(f, t).size for f, t in zip(found, truth)) / truth.size)


class AnnIndex:
    """A loaded compressed index (memory-mapped) and the rows to re-rank from."""

    def __init__(self, index, rows: ShardRows | None = None):
        self.index, self.rows = index, rows

    @classmethod
    def load(cls, folder, rows: ShardRows | None = None, nprobe: int | None = None) -> AnnIndex:
        faiss = import_faiss()
        index = faiss.read_index(str(Path(folder) / ANN_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if nprobe:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        return cls(index, rows)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries, k: int, rerank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the top-`k`; with `rerank` > 0 the top max(k, rerank) candidates are
        re-scored exactly from the stored rows. Missing results are row -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not rerank or self.rows is None:
            return self.index.search(queries, k)
        _, candidates = self.index.search(queries, max(k, int(rerank)))
        scores_out = np.full((len(queries), k), -np.inf, np.float32)
        rows_out = np.full((len(queries), k), -1, np.int64)
        for i, (query, found) in enumerate(zip(queries, candidates)):
            found = found[found >= 0]
            exact = self.rows.take(found) @ query
            order = np.lexsort((found, -exact))[:k]  # best first, ties to the lower row
            scores_out[i, : len(order)], rows_out[i, : len(order)] = exact[order], found[order]
        return scores_out, rows_out
