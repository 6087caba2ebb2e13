"""Exact top-k in numpy, for a search process that never imports torch (one ``cl2cm-search`` call,
where importing torch would cost more than the whole search).

The same answer as `search.topk`, bit for bit: both order by the canonical score of a pair (the
float64 inner product of the float32 vectors, every product exact, summed with the same pairwise
tree) and break exact ties by the lower gallery row. Float32 scores only pick candidates; a query's
answer is certified when no row outside its candidates can reach its k-th canonical score by the
error bound of `_bounds`, else it is redone with four times as many. `search.topk` is the one for
many queries (tiles over worker threads, any device); this one reads the gallery once per round in
blocks, which is what a few queries need."""

from __future__ import annotations

import numpy as np

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval._bounds import NORM_MARGIN, check_k, check_magnitude, error_factor

BLOCK_BYTES = 16 << 20  # a block of gallery rows (read and converted to float32) with its scores


def topk_numpy(queries, gallery, k: int, *, block_rows: int | None = None, margin: int | None = None):
    """Exact top-`k` gallery rows of every query by inner product.

    Args:
        queries: ``(n, d)`` array.
        gallery: ``(m, d)`` numpy array or ``np.memmap`` (any real dtype), read `block_rows` rows at a time.
        k: items per query, ``1 <= k <= m``.
        margin: extra float32 candidates per query before the canonical re-scoring (default ``max(16, k // 2)``).

    Returns:
        ``(scores, rows)``: float32 ``(n, k)`` (canonical scores rounded to float32) and int64 ``(n, k)``,
        best first, exact ties to the lower row: `search.topk`'s answer."""
    q = _matrix(queries, "queries").astype(np.float32)
    g = _matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise CL2CMError(f"embedding dims differ: queries has d={q.shape[1]} but gallery has d={g.shape[1]}")
    m, d = g.shape
    k = check_k(k, m)
    margin = max(16, k // 2) if margin is None else int(margin)
    if margin < 0:
        raise CL2CMError(f"margin must be >= 0, got {margin}")
    q_norm = _norms(q, "queries")
    rel, absolute = error_factor(d)
    block = int(block_rows or max(1, BLOCK_BYTES // (4 * d + 12 * len(q))))  # the block and its scores and rows
    scores = np.empty((len(q), k), np.float32)
    rows = np.empty((len(q), k), np.int64)
    pending = np.arange(len(q))
    width = min(m, k + margin)
    while len(pending):
        cand_vals, cand_rows, g_max = _candidates(q[pending], g, width, block)
        check_magnitude(float(q_norm.max()), g_max)
        canon = _canonical(q[pending], g, cand_rows)
        order = np.lexsort((cand_rows, -canon), axis=1)  # canonical score descending, then the lower row
        cand_rows = np.take_along_axis(cand_rows, order, 1)
        canon = np.take_along_axis(canon, order, 1)
        tol = rel * q_norm[pending] * g_max + absolute
        certified = (cand_vals.min(axis=1).astype(np.float64) + tol < canon[:, k - 1]) | (width >= m)
        done = pending[certified]
        scores[done], rows[done] = canon[certified, :k].astype(np.float32), cand_rows[certified, :k]
        pending = pending[~certified]
        width = min(m, 4 * width)
    return scores, rows


def _matrix(data, name: str) -> np.ndarray:
    array = data if isinstance(data, np.ndarray) else np.asarray(data)
    if array.dtype.kind not in "fiu":
        raise CL2CMError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise CL2CMError(f"{name} must be a 2-D (n, d) matrix of embeddings, got shape {array.shape}")
    if 0 in array.shape:
        raise CL2CMError(f"{name} is empty (shape {array.shape})")
    return array


def _norms(x: np.ndarray, name: str, offset: int = 0) -> np.ndarray:
    """Float64 row norms rounded up (as `_canonical.norms`); a non-finite value is an error naming its row."""
    row_norms = np.linalg.norm(x, axis=1)
    if not np.isfinite(row_norms).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if len(bad):
            raise CL2CMError(f"{name} has non-finite values (NaN or inf), first in row {int(bad[0]) + offset}")
        raise CL2CMError(f"{name} has rows too large for float32 scores; L2-normalise the embeddings")
    return row_norms.astype(np.float64) * NORM_MARGIN


def _candidates(q: np.ndarray, g: np.ndarray, width: int, block: int):
    """Per query the `width` rows with the largest float32 scores (any order), their scores, and the
    gallery's largest norm."""
    vals = np.empty((len(q), 0), np.float32)
    found = np.empty((len(q), 0), np.int64)
    g_max = 0.0
    for start in range(0, len(g), block):
        chunk = np.ascontiguousarray(g[start : start + block], dtype=np.float32)
        g_max = max(g_max, float(_norms(chunk, "gallery", start).max()))
        tile = q @ chunk.T
        rows = np.broadcast_to(np.arange(start, start + len(chunk)), tile.shape)
        if tile.shape[1] > width:
            rows = np.argpartition(-tile, width - 1, axis=1)[:, :width]
            tile, rows = np.take_along_axis(tile, rows, 1), rows + start
        vals, found = np.concatenate([vals, tile], axis=1), np.concatenate([found, rows], axis=1)
        if vals.shape[1] > width:
            keep = np.argpartition(-vals, width - 1, axis=1)[:, :width]
            vals, found = np.take_along_axis(vals, keep, 1), np.take_along_axis(found, keep, 1)
    return vals, found, g_max


def _canonical(q: np.ndarray, g: np.ndarray, cand_rows: np.ndarray) -> np.ndarray:
    """Canonical scores ``(n, width)`` of each query with its candidate rows: float64 products of the
    float32 values, summed by halving a zero-padded power-of-two width (`_canonical.canonical_dot`'s tree)."""
    n, width = cand_rows.shape
    flat = cand_rows.reshape(-1)
    order = np.argsort(flat, kind="stable")  # sorted reads of a memmap
    picked = np.empty((len(flat), q.shape[1]), np.float32)
    picked[order] = np.asarray(g[flat[order]], dtype=np.float32)
    span = 1 << max(0, (q.shape[1] - 1).bit_length())
    prod = np.zeros((len(flat), span), np.float64)
    prod[:, : q.shape[1]] = picked
    prod[:, : q.shape[1]] *= np.repeat(q.astype(np.float64), width, axis=0)
    while prod.shape[1] > 1:
        half = prod.shape[1] // 2
        prod = prod[:, :half] + prod[:, half:]
    return prod[:, 0].reshape(n, width)
