"""Exact top-k search in bounded memory: float32 tiles select candidates, canonical scores order
and certify them (ties: lower gallery index first).

Two ways to find the float32 candidates: many queries are split among the workers in (query
block x gallery chunk) tiles; queries that fit one query block (a few queries, e.g. one search) are
scored in one streaming pass in which each worker reads its own contiguous range of the gallery."""

from __future__ import annotations

import functools
import math

import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval._bounds import check_k, check_magnitude, error_factor
from cl2cm_hf.retrieval._canonical import PAIR_BATCH, canonical_dot, norms
from cl2cm_hf.retrieval._inputs import Rows, check_pair
from cl2cm_hf.retrieval._tiles import DEFAULT_MEMORY_BUDGET, Buffer, TileWorkers, tile_sizes

_STREAM_BLOCK_BYTES = 2 * 2**20  # gallery rows per streamed matmul: its norms are then taken from cache
_STREAM_BYTES_PER_SCORE = 20  # a segment's float32 score plus torch.topk's (value, index) pair for it


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
    q_rows = Rows(queries, "queries")
    g_rows = Rows(gallery, "gallery", device=q_rows.device)
    check_pair(q_rows, g_rows)
    k = check_k(k, g_rows.n)
    margin = max(16, k // 2) if margin is None else int(margin)
    if margin < 0:
        raise CL2CMError(f"margin must be >= 0, got {margin}")
    q = q_rows.block(0, q_rows.n)
    q_norm = norms(q, "queries")
    rel, absolute = error_factor(q_rows.d)
    n = q_rows.n

    scores = torch.empty(n, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=q.device)
    pending = torch.arange(n, device=q.device)
    width = min(g_rows.n, k + margin)
    with TileWorkers(q.device) as workers:
        while pending.numel():
            sub = q[pending]
            cand_vals, cand_idx, gallery_max_norm = _float32_candidates(
                workers, sub, g_rows, width, chunk_size, query_chunk_size, memory_budget
            )
            check_magnitude(float(q_norm.max()), gallery_max_norm)
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


def _canonical_candidates(q, g_rows: Rows, cand_idx: torch.Tensor) -> torch.Tensor:
    """Canonical scores ``(n, width)`` of each query with its candidate gallery rows."""
    n, width = cand_idx.shape
    out = torch.empty(n, width, dtype=torch.float64, device=q.device)
    step = max(1, PAIR_BATCH // width)
    for a in range(0, n, step):
        b = min(a + step, n)
        picked = g_rows.take(cand_idx[a:b].reshape(-1).cpu().numpy())
        out[a:b] = canonical_dot(q[a:b].repeat_interleave(width, dim=0), picked).view(b - a, width)
    return out


class _RunningTopk:
    """Per query, the `width` best float32 tile scores seen so far and their gallery indices."""

    def __init__(self, workers: TileWorkers, q: torch.Tensor, width: int, rows: int):
        self.workers, self.q, self.width, self.rows = workers, q, width, rows
        self.vals = torch.full((q.shape[0], width), -math.inf, dtype=torch.float32, device=q.device)
        self.idx = torch.zeros((q.shape[0], width), dtype=torch.int64, device=q.device)

    def add_chunk(self, chunk: torch.Tensor, start: int) -> None:
        """Merge the candidates of gallery rows ``start .. start + len(chunk)``, tile by tile."""
        n = self.q.shape[0]
        self.workers.run(
            functools.partial(self._merge_tile, chunk, start), range(0, n, self.rows), work=n * chunk.shape[0] * self.q.shape[1]
        )

    def _merge_tile(self, chunk: torch.Tensor, start: int, a: int) -> None:
        state = self.workers.state(lambda: {"tile": Buffer(torch.float32, self.q.device)})
        b = min(a + self.rows, self.q.shape[0])
        tile = torch.mm(self.q[a:b], chunk.T, out=state["tile"].view(b - a, chunk.shape[0]))
        # Only rows whose best score in the tile beats their running width-th score can gain a
        # candidate: once the running lists fill up, most rows skip the tile's top-k and merge.
        live = (tile.amax(dim=1) > self.vals[a:b].amin(dim=1)).nonzero().squeeze(1)
        if live.numel() == 0:
            return
        if live.numel() < b - a:
            tile, rows_at = tile[live], live + a
        else:
            rows_at = slice(a, b)
        vals, idx = torch.topk(tile, min(self.width, chunk.shape[0]), dim=1, sorted=False)
        merged_vals = torch.cat([self.vals[rows_at], vals], dim=1)
        merged_idx = torch.cat([self.idx[rows_at], idx + start], dim=1)
        keep = torch.topk(merged_vals, self.width, dim=1, sorted=False).indices
        self.vals[rows_at] = torch.gather(merged_vals, 1, keep)  # row blocks are disjoint across workers
        self.idx[rows_at] = torch.gather(merged_idx, 1, keep)


def _float32_candidates(workers: TileWorkers, q, g_rows: Rows, width, chunk_size, query_chunk_size, memory_budget):
    """Per query, `width` gallery items with the largest float32 tile scores (any order among
    float32 ties: the caller certifies), their scores, and the gallery's largest norm."""
    # Per tile element: the score (4 B) plus topk's workspace; the running candidates come on top.
    rows, cols = tile_sizes(q.shape[0], g_rows.n, chunk_size, query_chunk_size, memory_budget, 16, workers.workers)
    if rows >= q.shape[0]:  # one query block would leave all but one worker idle: split the gallery instead
        return _streamed_candidates(workers, q, g_rows, width, chunk_size, memory_budget)
    cols = max(cols, min(g_rows.n, width)) if chunk_size is None else cols
    running = _RunningTopk(workers, q, width, rows)
    max_norm = 0.0
    for start in range(0, g_rows.n, cols):
        chunk = g_rows.block(start, min(start + cols, g_rows.n))
        max_norm = max(max_norm, float(norms(chunk, g_rows.name, start).max()))
        running.add_chunk(chunk, start)
    return running.vals, running.idx, max_norm


def _streamed_candidates(workers: TileWorkers, q, g_rows: Rows, width, chunk_size, memory_budget):
    """`_float32_candidates` in one pass over the gallery, for queries that fit one query block.

    Each worker streams its own contiguous range of gallery rows in blocks of `chunk_size` rows
    (default: 2 MiB of rows, so that the block's norms are read from cache, not from memory again)
    into a segment of scores, and keeps the `width` best of each segment (one `torch.topk` per
    segment, not one top-k merge per block). Memory: per worker one segment of scores, sized so
    that all workers' segments with topk's workspace (20 B per score) fit `memory_budget`, plus one
    block (a copy only for memmaps and other dtypes) and its norms; the whole gallery when that fits
    (1 query x 6M rows in the default 256 MiB with 2 workers)."""
    n, d = q.shape
    m = g_rows.n
    block = chunk_size or max(1, _STREAM_BLOCK_BYTES // (4 * d))
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    segment = max(block, budget // (workers.workers * n * _STREAM_BYTES_PER_SCORE))
    segment = min(segment // block * block, m)
    # One query is scored as two equal columns: MKL's matrix-vector kernel reads a gallery at
    # half the speed of its matrix-matrix one (measured: 76 ms vs 39 ms for 1M x 256, one core).
    lanes = q if n > 1 else q.repeat(2, 1)
    share = -(-m // workers.workers)
    found = [None] * -(-m // share)

    def stream(part: int) -> None:
        lo, hi = part * share, min(part * share + share, m)
        scores = torch.empty(min(segment, hi - lo), lanes.shape[0], dtype=torch.float32, device=q.device)
        vals = idx = None
        max_norm = 0.0
        for s0 in range(lo, hi, segment):
            s1 = min(s0 + segment, hi)
            for b0 in range(s0, s1, block):
                b1 = min(b0 + block, s1)
                chunk = g_rows.block(b0, b1)
                torch.mm(chunk, lanes.T, out=scores[b0 - s0 : b1 - s0])
                max_norm = max(max_norm, float(norms(chunk, g_rows.name, b0).max()))
            top = torch.topk(scores[: s1 - s0, :n].T, min(width, s1 - s0), dim=1, sorted=False)
            vals, idx = _keep_best(vals, idx, top.values, top.indices + s0, width)
        found[part] = (vals, idx, max_norm)

    workers.run(stream, range(len(found)), work=n * m * d)
    vals, idx = found[0][:2]
    for more_vals, more_idx, _ in found[1:]:
        vals, idx = _keep_best(vals, idx, more_vals, more_idx, width)
    return vals, idx, max(norm for _, _, norm in found)


def _keep_best(vals, idx, new_vals, new_idx, width):
    """The `width` best of two candidate lists (scores and gallery indices), in any order."""
    if vals is None:
        return new_vals, new_idx
    vals, idx = torch.cat([vals, new_vals], dim=1), torch.cat([idx, new_idx], dim=1)
    keep = torch.topk(vals, min(width, vals.shape[1]), dim=1, sorted=False).indices
    return torch.gather(vals, 1, keep), torch.gather(idx, 1, keep)
