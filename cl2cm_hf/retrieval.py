"""Retrieval evaluation: embeddings in, ranks and metrics out, in bounded memory.

Public API
----------
``topk(queries, gallery, k, chunk_size=None)``
    Exact top-k gallery items per query by inner product, as ``(scores, indices)`` tensors.
``ranks(text_emb, visual_emb, text_to_visual, chunk_size=None)``
    1-based text-to-visual rank of every caption's item and visual-to-text rank of every visual
    item's best-ranked correct caption (NRCCR's protocol, several captions per item).
``retrieval_metrics(text_emb, visual_emb, text_to_visual)``
    ``t2v_r1 .. v2t_mnr, sumr`` (recalls in percent) from the ranks.
``metrics_from_ranks(t2v_ranks, v2t_ranks)``, ``recall_at_k(ranks, k)``
    The metric formula. Its single implementation lives in the `evaluate` module
    ``cl2cm_hf/metrics/retrieval_recall/retrieval_recall.py`` (``METRIC_MODULE_PATH``), which this
    module loads by path, so the evaluate module and this one cannot disagree.
``build_faiss_index``, ``faiss_search``, ``faiss_recall_at_k``
    Optional approximate search (``pip install cl2cm-hf[faiss]``) and its recall against `topk`.

Scores, ties and exactness
--------------------------
Embeddings are compared by inner product (cosine when they are L2-normalised). Nothing is ever
materialised beyond one ``(query block x gallery chunk)`` tile; the gallery (a tensor, a numpy
array or an ``np.memmap``) is read one chunk at a time.

A float32 matmul does not give the same bits for the same pair in tiles of different shapes (the
BLAS kernel changes with the shape), so results computed on raw float32 tiles would depend on the
chunk sizes whenever two scores are within rounding of each other, e.g. for duplicate items or
captions. Ranks and top-k are therefore defined on the **canonical score** of a pair: the inner
product of the float32 vectors evaluated in float64 (every product is exact) with a fixed pairwise
summation order. The float32 tiles only filter: with ``u = 2**-24``, a tile score differs from the
canonical one by at most ``gamma_d * |q| * |g|`` (``gamma_d = d u / (1 - d u)``, any summation
order), so a candidate whose tile score is outside that band around the threshold is decided by
the tile, and the few inside it are re-scored canonically. Results are thus exact with respect to
the canonical scores and identical for every chunk size, device thread count and BLAS kernel.

Tie rules:

* ``ranks`` is **pessimistic**: the rank of the correct item is the number of candidates whose
  canonical score is greater than *or equal to* its own (the item itself included), so a
  collapsed model whose scores are all equal gets the worst ranks, never perfect ones. For
  visual-to-text the rank is that of the best correct caption (the one with the highest score),
  i.e. the number of captions scoring at least as high as it.
* ``topk`` orders by canonical score, descending, and breaks exact ties by the **lower gallery
  index first**.

Non-finite embeddings are rejected with a ValueError (a NaN has no rank).

Memory and speed
----------------
Working memory is bounded by ``memory_budget`` (default 256 MiB; tiles are also capped at 2**20
scores, a size that runs fastest here): a 1,000 x (1,000,000 x 256) top-k needs ~100 MiB beyond
the gallery and the outputs. Each tile costs one float32 matmul plus four compare-and-count passes
(text-to-visual and visual-to-text share the tile). On CPU, tiles are spread over as many Python
threads as torch has intra-op threads, each running single-threaded ops (see `_Compute`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

METRIC_MODULE_PATH = str(Path(__file__).resolve().parent / "metrics" / "retrieval_recall")
"""Directory of the `evaluate` module: ``evaluate.load(METRIC_MODULE_PATH)`` works offline."""

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of working memory (tiles, chunk copies, candidate buffers) used when none is given."""

_TILE_CAP = 1 << 20  # elements per (query block x gallery chunk) tile: 4 MiB of scores (measured best on 2 cores)
_DEFAULT_QUERY_BLOCK = 1024
_PAIR_BATCH = 1 << 14  # pairs per batch where rows are gathered for canonical re-scoring
_OWN_PAIR_BATCH = 1 << 10  # captions per job scoring their own item canonically
_PAIR_WORKSPACE = 1 << 19  # float64 elements of each canonical-score workspace (4 MiB)
_MAX_TILE_SIDE = (1 << 24) - 1
_PARALLEL_WORK_MIN = 1 << 23  # multiply-adds per gallery chunk below which the workers are not used
_UNIT_ROUNDOFF_32 = 2.0**-24
_UNIT_ROUNDOFF_64 = 2.0**-53
_SMALLEST_NORMAL_32 = 2.0**-126


class RetrievalRanks(NamedTuple):
    """1-based ranks of both directions.

    ``t2v[i]``: rank of caption i's visual item among all visual items.
    ``v2t[j]``: rank of the best-ranked correct caption of visual item ``v2t_index[j]`` among all
    captions. Visual items without any caption (distractors) have no visual-to-text rank and are
    left out; ``v2t_index`` lists the items that have one.
    """

    t2v: np.ndarray
    v2t: np.ndarray
    v2t_index: np.ndarray


# --------------------------------------------------------------------------------------------
# The metric formula (single source of truth: the evaluate module file)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _formula():
    """The evaluate module file, loaded under the name that makes it skip its `evaluate` wrapper."""
    path = Path(METRIC_MODULE_PATH) / "retrieval_recall.py"
    if not path.is_file():
        raise FileNotFoundError(f"the retrieval_recall metric module is missing: {path} (broken installation?)")
    spec = importlib.util.spec_from_file_location("cl2cm_hf._retrieval_recall_formula", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__name__ == module.FORMULA_MODULE_NAME
    return module


METRIC_KEYS: tuple[str, ...] = _formula().METRIC_KEYS
"""Every metric key, in table order (``t2v_r1 .. v2t_mnr, sumr``): the one list of them."""
DIRECTIONS: tuple[str, ...] = _formula().DIRECTIONS


def metrics_from_ranks(t2v_ranks, v2t_ranks) -> dict:
    """``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_mnr, v2t_r1, ..., v2t_mnr, sumr`` from 1-based ranks.

    Recalls are percentages (0-100), MedR is the floor of the median rank (NRCCR's convention),
    MnR the mean rank, SumR the sum of the six recalls (at most 600). The formula is the one of the
    ``retrieval_recall`` evaluate module (loaded from its file), so both always agree.
    """
    return _formula().metrics_from_ranks(_as_numpy_ranks(t2v_ranks), _as_numpy_ranks(v2t_ranks))


def recall_at_k(ranks, k: int) -> float:
    """Percentage of queries whose correct item is within the top `k` (same formula as the metrics)."""
    return _formula().recall_at_k(_as_numpy_ranks(ranks), k)


def _as_numpy_ranks(ranks):
    if isinstance(ranks, torch.Tensor):
        return ranks.detach().cpu().numpy()
    return ranks


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class _Rows:
    """Read access by row blocks to an ``(n, d)`` matrix held as a tensor or a numpy array
    (``np.memmap`` included); blocks come back as float32 tensors on `device`."""

    def __init__(self, data, name: str, device: torch.device | None = None):
        self.name = name
        if isinstance(data, torch.Tensor):
            if data.is_complex() or data.dtype == torch.bool:
                raise ValueError(f"{name} must hold real numbers, got dtype {data.dtype}")
            self._tensor, self._array = data.detach(), None
            shape = tuple(data.shape)
            self.device = data.device if device is None else device
        else:
            array = data if isinstance(data, np.ndarray) else np.asarray(data)
            if array.dtype.kind not in "fiu":
                raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
            self._tensor, self._array = None, array
            shape = array.shape
            self.device = torch.device("cpu") if device is None else device
        if len(shape) != 2:
            raise ValueError(f"{name} must be a 2-D (n, d) matrix of embeddings, got shape {shape}")
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {shape})")
        self.n, self.d = int(shape[0]), int(shape[1])

    def block(self, start: int, stop: int) -> torch.Tensor:
        if self._tensor is not None:
            out = self._tensor[start:stop].to(device=self.device, dtype=torch.float32)
        else:
            part = self._array[start:stop]
            if part.dtype != np.float32 or not part.flags.c_contiguous or not part.flags.writeable:
                part = np.array(part, dtype=np.float32, order="C")  # a bounded copy (memmap, other dtypes)
            out = torch.from_numpy(part).to(self.device)
        return out

    def take(self, index: np.ndarray) -> torch.Tensor:
        """Rows at `index` (int64 numpy array) as a float32 tensor."""
        if self._tensor is not None:
            picked = self._tensor.index_select(0, torch.as_tensor(index, device=self._tensor.device))
            return picked.to(device=self.device, dtype=torch.float32)
        return torch.from_numpy(np.asarray(self._array[index], dtype=np.float32)).to(self.device)


def _check_pair(queries: _Rows, gallery: _Rows) -> None:
    if queries.d != gallery.d:
        raise ValueError(
            f"embedding dims differ: {queries.name} has d={queries.d} but {gallery.name} has d={gallery.d}"
        )


def _check_text_to_visual(text_to_visual, n_text: int, n_visual: int) -> np.ndarray:
    if isinstance(text_to_visual, torch.Tensor):
        text_to_visual = text_to_visual.detach().cpu().numpy()
    index = np.asarray(text_to_visual)
    if index.ndim != 1 or index.shape[0] != n_text:
        raise ValueError(
            f"text_to_visual must hold one visual index per caption: expected shape ({n_text},), got {index.shape}"
        )
    if index.dtype.kind not in "iu":
        if index.dtype.kind == "f" and np.all(np.isfinite(index)) and np.all(index == np.round(index)):
            index = index.astype(np.int64)
        else:
            raise ValueError(f"text_to_visual must hold integer gallery indices, got dtype {index.dtype}")
    index = index.astype(np.int64)
    bad = np.nonzero((index < 0) | (index >= n_visual))[0]
    if bad.size:
        raise ValueError(
            f"text_to_visual[{int(bad[0])}]={int(index[bad[0]])} is out of range for a gallery of "
            f"{n_visual} visual items ({bad.size} caption(s) out of range)"
        )
    return index


def _balanced(total: int, size: int) -> int:
    """`size` adjusted so that `total` splits into equal blocks (no tiny last block)."""
    size = max(1, min(total, int(size)))
    blocks = -(-total // size)
    return -(-total // blocks)


def _positive_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _tile_sizes(n_query: int, n_gallery: int, chunk_size, query_chunk_size, memory_budget, bytes_per_element: int,
                workers: int = 1):
    """(query block, gallery chunk) whose tiles, one per worker, fit the memory budget; with several
    workers, query blocks are small enough for every worker to get some of each chunk."""
    chunk_size = _positive_or_none(chunk_size, "chunk_size")
    query_chunk_size = _positive_or_none(query_chunk_size, "query_chunk_size")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget < 2**20:
        raise ValueError(f"memory_budget must be at least 1 MiB, got {memory_budget!r}")
    elements = max(1, min(_TILE_CAP, budget // (bytes_per_element * max(1, workers))))
    row_cap = n_query if workers <= 1 else min(_DEFAULT_QUERY_BLOCK, max(64, -(-n_query // (4 * workers))))
    if chunk_size is None and query_chunk_size is None:
        rows = min(n_query, _DEFAULT_QUERY_BLOCK, row_cap)
        cols = _balanced(n_gallery, max(1, elements // rows))
        rows = _balanced(n_query, max(1, min(row_cap, elements // cols)))
    elif chunk_size is None:
        rows = min(n_query, query_chunk_size)
        cols = _balanced(n_gallery, max(1, elements // rows))
    elif query_chunk_size is None:
        cols = min(n_gallery, chunk_size)
        rows = _balanced(n_query, max(1, min(row_cap, elements // cols)))
    else:
        rows, cols = min(n_query, query_chunk_size), min(n_gallery, chunk_size)
    # Counts are sums of 0/1 floats along a tile side: exact below 2**24.
    return min(rows, _MAX_TILE_SIDE), min(cols, _MAX_TILE_SIDE)


class _Buffer:
    """A reusable flat buffer handing out contiguous ``(r, c)`` views (allocated once, grown on
    demand: no allocation per tile)."""

    def __init__(self, dtype, device):
        self._dtype, self._device, self._flat = dtype, device, None

    def view(self, rows: int, cols: int) -> torch.Tensor:
        size = rows * cols
        if self._flat is None or self._flat.numel() < size:
            self._flat = torch.empty(size, dtype=self._dtype, device=self._device)
        return self._flat[:size].view(rows, cols)


# --------------------------------------------------------------------------------------------
# Canonical scores and the float32 error bound
# --------------------------------------------------------------------------------------------


def _canonical_dot(a: torch.Tensor, b: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
    """Row-wise inner products of float32 rows in float64, with a fixed pairwise summation order.

    Every product of two float32 numbers is exact in float64; the sum uses the same tree for any
    number of rows, so a pair always gets the same bits wherever it is computed. Works in place in
    two float64 workspaces, kept in `workspace` (a worker's state) for the next call when given."""
    n, d = a.shape
    out = torch.empty(n, dtype=torch.float64, device=a.device)
    if n == 0:
        return out
    width = 1 << max(0, (d - 1).bit_length())
    batch = max(1, _PAIR_WORKSPACE // width)
    rows = min(n, batch)
    cached = (workspace or {}).get("canonical")
    if cached is not None and cached[0].shape[0] >= rows and cached[0].shape[1] == width and cached[0].device == a.device:
        prod_ws, other_ws = cached
    else:
        prod_ws = torch.zeros(rows, width, dtype=torch.float64, device=a.device)  # padding stays zero
        other_ws = torch.empty(rows, d, dtype=torch.float64, device=a.device)
        if workspace is not None:
            workspace["canonical"] = (prod_ws, other_ws)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        prod = prod_ws[: stop - start]
        prod[:, :d].copy_(a[start:stop])
        prod[:, :d].mul_(other_ws[: stop - start].copy_(b[start:stop]))
        while prod.shape[1] > 1:  # the tree only writes columns < width / 2 < d
            half = prod.shape[1] // 2
            prod = prod[:, :half].add_(prod[:, half:])
        out[start:stop] = prod[:, 0]
    return out


def _error_factor(d: int) -> tuple[float, float]:
    """(relative, absolute) bound of |float32 tile score - canonical score| per unit of |q| |g|.

    gamma_d of float32 (any summation order, FMA or not) plus gamma_d of the canonical float64 sum,
    doubled as a margin for the norms' own rounding; the absolute term covers flushed subnormals."""
    def gamma(n, u):
        return n * u / (1.0 - n * u)

    return 2.0 * (gamma(d, _UNIT_ROUNDOFF_32) + gamma(d, _UNIT_ROUNDOFF_64)), 4.0 * (d + 2) * _SMALLEST_NORMAL_32


def _norms(x: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """Row norms (float64), rounded up a little (float32 norms are within ~d u of the truth, far
    inside the factor-2 margin of the error bound). They double as the check that every value is
    finite: a NaN or an inf makes its row's norm non-finite."""
    norms = torch.linalg.vector_norm(x, dim=1)
    if not bool(torch.isfinite(norms).all()):
        finite_rows = torch.isfinite(x).all(dim=1)
        if not bool(finite_rows.all()):
            bad = int(torch.nonzero(~finite_rows)[0, 0]) + offset
            raise ValueError(f"{name} has non-finite values (NaN or inf), first in row {bad}")
        raise ValueError(f"{name} has rows too large for float32 scores; L2-normalise the embeddings")
    return norms.double() * (1.0 + 2.0**-10)


def _round_down(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the largest float32 not above it."""
    y = x.float()
    return torch.where(y.double() > x, torch.nextafter(y, torch.full_like(y, -math.inf)), y)


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the smallest float32 not below it."""
    y = x.float()
    return torch.where(y.double() < x, torch.nextafter(y, torch.full_like(y, math.inf)), y)


class _Compute:
    """The numeric and threading context of `ranks` and `topk`.

    * float32 matmuls stay in full float32 (the error bound assumes it);
    * on CPU, tiles are processed by as many Python threads as torch has intra-op threads, each
      running its torch ops on one thread (torch releases the GIL inside ops). A tile's matmul
      and its element-wise passes then keep every core busy without OpenMP barriers: on a shared
      machine, each barrier of the many short element-wise passes can wait a whole scheduler
      slice for a descheduled thread (measured: evaluation 10x slower on 2 busy cores). The
      caller's thread settings are restored on exit.
    """

    def __init__(self, device: torch.device):
        self.workers = torch.get_num_threads() if device.type == "cpu" else 1
        self._pool = None
        self._states: list[dict] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def __enter__(self):
        self._precision = torch.get_float32_matmul_precision()
        if self._precision != "highest":
            torch.set_float32_matmul_precision("highest")
        self._threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(1)  # the calling thread's own (small) work too
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cl2cm-retrieval", initializer=torch.set_num_threads, initargs=(1,))
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        if self._precision != "highest":
            torch.set_float32_matmul_precision(self._precision)

    def run(self, job, items, work: int) -> None:
        """``job(item)`` for every item, spread over the workers unless the `work` (multiply-adds)
        is too small to pay for the hand-over; returns when all are done."""
        items = list(items)
        if self._pool is None or len(items) == 1 or work < _PARALLEL_WORK_MIN:
            for item in items:
                job(item)
        else:
            for _ in self._pool.map(job, items):
                pass

    def state(self, make) -> dict:
        """This thread's working state (buffers, partial sums), made by `make()` on first use."""
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = make()
            with self._lock:
                self._states.append(state)
        return state

    @property
    def states(self) -> list[dict]:
        return list(self._states)


def _check_magnitude(max_query_norm: float, max_gallery_norm: float) -> None:
    if max_query_norm * max_gallery_norm > 1e36:
        raise ValueError(
            "embedding norms are too large for float32 scores (|q| * |g| > 1e36); L2-normalise the embeddings"
        )


# --------------------------------------------------------------------------------------------
# Top-k
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def topk(queries, gallery, k: int, chunk_size: int | None = None, *, query_chunk_size: int | None = None,
         memory_budget: int | None = None, margin: int | None = None):
    """Exact top-`k` gallery items of every query by inner product, in bounded memory.

    Args:
        queries: ``(n, d)`` tensor or array.
        gallery: ``(m, d)`` tensor, numpy array or ``np.memmap``; read `chunk_size` rows at a time.
        k: number of items per query, ``1 <= k <= m``.
        chunk_size: gallery rows per chunk; chosen from `memory_budget` when None.
        query_chunk_size: queries per tile; chosen from the budget when None.
        memory_budget: bytes of working memory (default ``DEFAULT_MEMORY_BUDGET``, 256 MiB);
            the outputs ``(n, k)`` and the queries themselves come on top.
        margin: extra float32 candidates kept per query before the exact re-scoring (default
            ``max(16, k // 2)``); rows with more near-ties than that are redone with a larger one.

    Returns:
        ``(scores, indices)``: float32 ``(n, k)`` scores (canonical scores rounded to float32) and
        int64 ``(n, k)`` gallery indices, best first; exact ties go to the lower index. Tensors on
        the queries' device (CPU for numpy inputs).
    """
    q_rows = _Rows(queries, "queries")
    g_rows = _Rows(gallery, "gallery", device=q_rows.device)
    _check_pair(q_rows, g_rows)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= g_rows.n:
        raise ValueError(f"k must be an integer in [1, {g_rows.n}] (the gallery size), got {k!r}")
    k = int(k)
    margin = max(16, k // 2) if margin is None else int(margin)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    q = q_rows.block(0, q_rows.n)
    q_norm = _norms(q, "queries")
    rel, absolute = _error_factor(q_rows.d)
    n = q_rows.n

    scores = torch.empty(n, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=q.device)
    pending = torch.arange(n, device=q.device)
    width = min(g_rows.n, k + margin)
    with _Compute(q.device) as compute:
        while pending.numel():
            sub = q[pending]
            cand_vals, cand_idx, gallery_max_norm = _float32_candidates(
                compute, sub, g_rows, width, chunk_size, query_chunk_size, memory_budget
            )
            _check_magnitude(float(q_norm.max()), gallery_max_norm)
            canon = _canonical_candidates(sub, g_rows, cand_idx)
            # (canonical desc, index asc): sort by index, then a stable sort by score.
            by_index = torch.argsort(cand_idx, dim=1)
            cand_idx = torch.gather(cand_idx, 1, by_index)
            canon = torch.gather(canon, 1, by_index)
            order = torch.sort(canon, dim=1, descending=True, stable=True).indices
            cand_idx = torch.gather(cand_idx, 1, order)
            canon = torch.gather(canon, 1, order)
            # Certified when no item outside the candidates can reach the k-th canonical score.
            tol = rel * q_norm[pending] * gallery_max_norm + absolute
            certified = cand_vals.min(dim=1).values.double() + tol < canon[:, k - 1]
            if width >= g_rows.n:
                certified[:] = True
            done = pending[certified]
            scores[done] = canon[certified, :k].float()
            indices[done] = cand_idx[certified, :k]
            pending = pending[~certified]
            width = min(g_rows.n, 4 * width)
    return scores, indices


def _canonical_candidates(q, g_rows: _Rows, cand_idx: torch.Tensor) -> torch.Tensor:
    """Canonical scores ``(n, width)`` of each query with its candidate gallery rows."""
    n, width = cand_idx.shape
    out = torch.empty(n, width, dtype=torch.float64, device=q.device)
    step = max(1, _PAIR_BATCH // width)
    for a in range(0, n, step):
        b = min(a + step, n)
        picked = g_rows.take(cand_idx[a:b].reshape(-1).cpu().numpy())
        out[a:b] = _canonical_dot(q[a:b].repeat_interleave(width, dim=0), picked).view(b - a, width)
    return out


def _float32_candidates(compute: _Compute, q, g_rows: _Rows, width, chunk_size, query_chunk_size, memory_budget):
    """Per query, `width` gallery items with the largest float32 tile scores (any order among
    float32 ties: the caller certifies), their scores, and the gallery's largest norm."""
    n = q.shape[0]
    # Per tile element: the score (4 B) plus topk's workspace; the running candidates come on top.
    rows, cols = _tile_sizes(n, g_rows.n, chunk_size, query_chunk_size, memory_budget, 16, compute.workers)
    cols = max(cols, min(g_rows.n, width)) if chunk_size is None else cols
    run_vals = torch.full((n, width), -math.inf, dtype=torch.float32, device=q.device)
    run_idx = torch.zeros((n, width), dtype=torch.int64, device=q.device)
    max_norm = 0.0
    for start in range(0, g_rows.n, cols):
        stop = min(start + cols, g_rows.n)
        chunk = g_rows.block(start, stop)
        max_norm = max(max_norm, float(_norms(chunk, g_rows.name, start).max()))
        kk = min(width, stop - start)

        def job(a, chunk=chunk, start=start, stop=stop, kk=kk):
            state = compute.state(lambda: {"tile": _Buffer(torch.float32, q.device)})
            b = min(a + rows, n)
            tile = torch.mm(q[a:b], chunk.T, out=state["tile"].view(b - a, stop - start))
            # Only rows whose best score in the tile beats their running width-th score can gain a
            # candidate: once the running lists fill up, most rows skip the tile's top-k and merge.
            live = (tile.amax(dim=1) > run_vals[a:b].amin(dim=1)).nonzero().squeeze(1)
            if live.numel() == 0:
                return
            if live.numel() < b - a:
                tile, rows_at = tile[live], live + a
            else:
                rows_at = slice(a, b)
            vals, idx = torch.topk(tile, kk, dim=1, sorted=False)
            merged_vals = torch.cat([run_vals[rows_at], vals], dim=1)
            merged_idx = torch.cat([run_idx[rows_at], idx + start], dim=1)
            keep = torch.topk(merged_vals, width, dim=1, sorted=False).indices
            run_vals[rows_at] = torch.gather(merged_vals, 1, keep)  # row blocks are disjoint across workers
            run_idx[rows_at] = torch.gather(merged_idx, 1, keep)

        compute.run(job, range(0, n, rows), work=n * (stop - start) * q.shape[1])
    return run_vals, run_idx, max_norm


# --------------------------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ranks(text_emb, visual_emb, text_to_visual, chunk_size: int | None = None, *,
          query_chunk_size: int | None = None, memory_budget: int | None = None) -> RetrievalRanks:
    """1-based ranks of both retrieval directions, computed tile by tile.

    Args:
        text_emb: ``(n_text, d)`` caption embeddings (tensor or array).
        visual_emb: ``(n_visual, d)`` visual embeddings (tensor, array or ``np.memmap``).
        text_to_visual: ``(n_text,)`` gallery index of each caption's visual item; an item may
            have any number of captions (0 makes it a distractor for text-to-visual only).
        chunk_size: visual items per chunk (default: from the memory budget).
        query_chunk_size: captions per tile (default: from the memory budget).
        memory_budget: bytes of working memory for tiles (default 256 MiB).

    Returns:
        `RetrievalRanks` of int64 numpy arrays. Pessimistic ties (see the module docstring): the
        rank counts every candidate scoring at least as high as the correct one, itself included.
        The full similarity matrix is never built: each tile contributes, per caption, the number
        of visual items scoring at least the correct item's score and, per visual item, the number
        of captions scoring at least its best caption's score.
    """
    t_rows = _Rows(text_emb, "text_emb")
    v_rows = _Rows(visual_emb, "visual_emb", device=t_rows.device)
    _check_pair(t_rows, v_rows)
    t2v = _check_text_to_visual(text_to_visual, t_rows.n, v_rows.n)
    n_t, n_v = t_rows.n, v_rows.n
    text = t_rows.block(0, n_t)
    device = text.device
    target = torch.as_tensor(t2v, device=device)

    with _Compute(device) as compute:
        rows, cols = _tile_sizes(n_t, n_v, chunk_size, query_chunk_size, memory_budget, 12, compute.workers)
        # Canonical score of every caption with its own item; the best caption of every item.
        text_norm = _norms(text, t_rows.name)
        correct = torch.empty(n_t, dtype=torch.float64, device=device)

        def score_own_pairs(start):
            stop = min(start + _OWN_PAIR_BATCH, n_t)
            workspace = compute.state(dict)
            correct[start:stop] = _canonical_dot(text[start:stop], v_rows.take(t2v[start:stop]), workspace)

        compute.run(score_own_pairs, range(0, n_t, _OWN_PAIR_BATCH), work=64 * n_t * t_rows.d)
        best_score = torch.full((n_v,), -math.inf, dtype=torch.float64, device=device)
        best_score.scatter_reduce_(0, target, correct, reduce="amax")
        has_caption = torch.bincount(target, minlength=n_v) > 0
        is_best = correct == best_score[target]
        best_caption = torch.full((n_v,), n_t, dtype=torch.int64, device=device)
        best_caption.scatter_reduce_(0, target[is_best], torch.nonzero(is_best)[:, 0], reduce="amin")

        rel, absolute = _error_factor(t_rows.d)
        text_max_norm = float(text_norm.max())
        t2v_count = torch.zeros(n_t, dtype=torch.int64, device=device)
        block_starts = torch.arange(0, n_t + rows, rows, device=device).clamp_(max=n_t)

        def tile_state():
            state = compute.state(dict)
            if "tile" not in state:
                state["tile"] = _Buffer(torch.float32, device)
                state["mask"] = _Buffer(torch.float32, device)  # 0/1 floats: float sums count fastest
                state["v2t"] = torch.zeros(n_v, dtype=torch.int64, device=device)  # this worker's partial counts
            return state

        for g0 in range(0, n_v, cols):
            g1 = min(g0 + cols, n_v)
            chunk = v_rows.block(g0, g1)
            chunk_norm = _norms(chunk, v_rows.name, g0)
            chunk_max_norm = float(chunk_norm.max())
            _check_magnitude(text_max_norm, chunk_max_norm)
            # Bands [lo, hi] (float32, rounded outwards) outside which a tile score decides alone.
            row_tol = rel * chunk_max_norm * text_norm + absolute
            row_lo = _round_down(correct - row_tol).unsqueeze(1)
            row_hi = _round_up(correct + row_tol).unsqueeze(1)
            col_best = best_score[g0:g1]
            col_has = has_caption[g0:g1]
            col_tol = rel * text_max_norm * chunk_norm + absolute
            # Items without captions get +inf: nothing is counted for them.
            col_lo = torch.where(col_has, _round_down(col_best - col_tol), math.inf).unsqueeze(0)
            col_hi = torch.where(col_has, _round_up(col_best + col_tol), math.inf).unsqueeze(0)
            # The "own" pair of each query (caption -> its item, item -> its best caption),
            # sorted by caption so that each tile takes a slice.
            own_t = torch.nonzero((target >= g0) & (target < g1))[:, 0]
            own_t_item = target[own_t] - g0
            own_v_item = torch.nonzero(col_has)[:, 0]
            own_v_caption = best_caption[g0 + own_v_item]
            order = torch.argsort(own_v_caption)
            own_v_item, own_v_caption = own_v_item[order], own_v_caption[order]
            t_bounds = torch.searchsorted(own_t, block_starts).tolist()
            v_bounds = torch.searchsorted(own_v_caption, block_starts).tolist()

            def job(block, chunk=chunk, g0=g0, g1=g1, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi,
                    col_best=col_best, own_t=own_t, own_t_item=own_t_item, own_v_item=own_v_item,
                    own_v_caption=own_v_caption, t_bounds=t_bounds, v_bounds=v_bounds):
                state = tile_state()
                a = block * rows
                b = min(a + rows, n_t)
                tile = torch.mm(text[a:b], chunk.T, out=state["tile"].view(b - a, g1 - g0))
                mask = state["mask"].view(b - a, g1 - g0)
                t_own = slice(t_bounds[block], t_bounds[block + 1])
                v_own = slice(v_bounds[block], v_bounds[block + 1])
                t2v_count[a:b] += _count_tile(  # row blocks are disjoint across workers
                    tile, mask, 0, row_lo[a:b], row_hi[a:b], correct[a:b],
                    own_t[t_own] - a, own_t_item[t_own],
                    lambda q, g: _canonical_dot(text.index_select(0, a + q), chunk.index_select(0, g), state),
                )
                state["v2t"][g0:g1] += _count_tile(
                    tile, mask, 1, col_lo, col_hi, col_best,
                    own_v_item[v_own], own_v_caption[v_own] - a,
                    lambda q, g: _canonical_dot(text.index_select(0, a + g), chunk.index_select(0, q), state),
                )

            compute.run(job, range(len(block_starts) - 1), work=n_t * (g1 - g0) * t_rows.d)
        v2t_count = sum(state["v2t"] for state in compute.states if "v2t" in state)

    keep = has_caption.cpu().numpy()
    return RetrievalRanks(
        t2v=t2v_count.cpu().numpy(), v2t=v2t_count.cpu().numpy()[keep], v2t_index=np.nonzero(keep)[0]
    )


def _count_tile(tile, mask, query_axis, lo, hi, threshold, own_q, own_g, rescore):
    """Per query of one tile: the candidates whose canonical score is >= the query's threshold.

    `query_axis` 0: queries are the tile's rows (text-to-visual), 1: its columns (visual-to-text).
    `lo`/`hi` bound the float32 band of each query; `own_q`/`own_g` locate each query's own pair
    (canonically equal to the threshold, so counted without re-scoring); `rescore(q, g)` gives
    canonical scores of (query, candidate) positions of the band that remain undecided."""
    other_axis = 1 - query_axis
    # Sums of 0/1 floats are exact: a tile side is shorter than 2**24.
    n_ge_lo = torch.ge(tile, lo, out=mask).sum(other_axis).to(torch.int32)
    count = torch.gt(tile, hi, out=mask).sum(other_axis).to(torch.int32)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    own_vals = tile[own_q, own_g] if query_axis == 0 else tile[own_g, own_q]
    own_in_band = (own_vals >= lo[own_q]) & (own_vals <= hi[own_q])
    count[own_q] += own_in_band.to(count.dtype)
    flagged = torch.nonzero(n_ge_lo > count)[:, 0]
    if flagged.numel():
        sub = tile[flagged] if query_axis == 0 else tile[:, flagged].T
        band = (sub >= lo[flagged].unsqueeze(1)) & (sub <= hi[flagged].unsqueeze(1))
        own_of = torch.full((count.shape[0],), -1, dtype=torch.int64, device=tile.device)
        own_of[own_q[own_in_band]] = own_g[own_in_band]
        own_flagged = own_of[flagged]
        with_own = torch.nonzero(own_flagged >= 0)[:, 0]
        band[with_own, own_flagged[with_own]] = False
        pq, pg = torch.nonzero(band, as_tuple=True)
        for start in range(0, pq.numel(), _PAIR_BATCH):  # bounded memory even if everything ties
            q_pos, g_pos = flagged[pq[start : start + _PAIR_BATCH]], pg[start : start + _PAIR_BATCH]
            hits = rescore(q_pos, g_pos) >= threshold[q_pos]
            count.index_add_(0, q_pos, hits.to(count.dtype))
    return count


def retrieval_metrics(text_emb, visual_emb, text_to_visual, chunk_size: int | None = None, *,
                      query_chunk_size: int | None = None, memory_budget: int | None = None) -> dict:
    """``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_mnr, v2t_r1, v2t_r5, v2t_r10, v2t_medr, v2t_mnr, sumr``.

    `text_to_visual[i]` is the gallery index of caption i's visual item. Recalls are percentages
    (0-100), SumR the sum of the six recalls. Ranks come from `ranks` (chunked, pessimistic ties),
    the formula from `metrics_from_ranks`.
    """
    result = ranks(
        text_emb, visual_emb, text_to_visual, chunk_size,
        query_chunk_size=query_chunk_size, memory_budget=memory_budget,
    )
    return metrics_from_ranks(result.t2v, result.v2t)


# --------------------------------------------------------------------------------------------
# Optional approximate search (faiss)
# --------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "approximate search needs faiss: pip install 'cl2cm-hf[faiss]' (faiss-cpu); exact search "
            "(cl2cm_hf.retrieval.topk / ranks) needs nothing more"
        ) from exc
    return faiss


def _float32_numpy(block: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(block.detach().cpu().numpy(), dtype=np.float32)


def build_faiss_index(gallery, index_type: str = "hnsw", *, nlist: int | None = None, nprobe: int | None = None,
                      hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                      train_size: int | None = None, chunk_size: int = 65536, seed: int = 0):
    """An approximate inner-product index over `gallery` (tensor, array or memmap, added in chunks).

    ``index_type="hnsw"``: ``IndexHNSWFlat`` (M=`hnsw_m`, `ef_search`); ``"ivf_flat"``:
    ``IndexIVFFlat`` with `nlist` lists (default ~4 sqrt(m), at most m / 39) trained on `train_size` random rows
    (default ``min(m, 64 nlist)``), searched with `nprobe` lists (default ``max(1, nlist // 8)``).
    ``"flat"``: the exact ``IndexFlatIP`` (a baseline). Compare with `faiss_recall_at_k`.
    """
    faiss = _faiss()
    rows = _Rows(gallery, "gallery", device=torch.device("cpu"))
    metric = faiss.METRIC_INNER_PRODUCT
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(rows.d, int(hnsw_m), metric)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
    elif index_type == "ivf_flat":
        # faiss wants >= 39 training points per list: ~4 sqrt(m) lists, fewer for small galleries.
        nlist = int(nlist or max(1, min(rows.n // 39, round(4 * math.sqrt(rows.n)))))
        quantizer = faiss.IndexFlatIP(rows.d)
        index = faiss.IndexIVFFlat(quantizer, rows.d, nlist, metric)
        size = min(rows.n, int(train_size or 64 * nlist))
        pick = np.sort(np.random.default_rng(seed).choice(rows.n, size=size, replace=False))
        index.train(_float32_numpy(rows.take(pick)))
        index.nprobe = int(nprobe or max(1, nlist // 8))
    elif index_type == "flat":
        index = faiss.IndexFlatIP(rows.d)
    else:
        raise ValueError(f"index_type must be 'hnsw', 'ivf_flat' or 'flat', got {index_type!r}")
    for start in range(0, rows.n, int(chunk_size)):
        block = rows.block(start, min(start + int(chunk_size), rows.n))
        _norms(block, rows.name, start)  # rejects NaN / inf
        index.add(_float32_numpy(block))
    return index


def faiss_search(index, queries, k: int):
    """``(scores, indices)`` float32/int64 tensors of the index's approximate top-`k`."""
    rows = _Rows(queries, "queries", device=torch.device("cpu"))
    if rows.d != index.d:
        raise ValueError(f"embedding dims differ: queries have d={rows.d} but the index has d={index.d}")
    scores, indices = index.search(_float32_numpy(rows.block(0, rows.n)), int(k))
    return torch.from_numpy(scores), torch.from_numpy(indices.astype(np.int64))


def faiss_recall_at_k(index, queries, gallery, k: int = 10, chunk_size: int | None = None,
                      memory_budget: int | None = None) -> float:
    """Fraction (0-1) of the exact top-`k` items (`topk`) that the approximate index returns,
    averaged over the queries: the usual ``k-recall@k`` of an ANN index."""
    _, exact = topk(queries, gallery, k, chunk_size, memory_budget=memory_budget)
    _, approx = faiss_search(index, queries, k)
    exact_np, approx_np = exact.cpu().numpy(), approx.numpy()
    found = sum(np.intersect1d(e, a).size for e, a in zip(exact_np, approx_np))
    return found / float(exact_np.size)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METRIC_MODULE_PATH",
    "RetrievalRanks",
    "build_faiss_index",
    "faiss_recall_at_k",
    "faiss_search",
    "metrics_from_ranks",
    "ranks",
    "recall_at_k",
    "retrieval_metrics",
    "topk",
]
