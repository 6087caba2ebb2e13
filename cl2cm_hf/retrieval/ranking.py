"""Exact ranks of both retrieval directions (NRCCR's protocol, pessimistic ties) and the metrics
computed from them, in bounded memory: the similarity matrix is never built."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from cl2cm_hf.retrieval._bounds import check_magnitude, error_factor
from cl2cm_hf.retrieval._canonical import PAIR_BATCH, canonical_dot, norms, round_down, round_up
from cl2cm_hf.retrieval._inputs import Rows, check_pair, check_text_to_visual
from cl2cm_hf.retrieval._tiles import Buffer, TileWorkers, tile_sizes
from cl2cm_hf.retrieval.metrics import metrics_from_ranks

_OWN_PAIR_BATCH = 1 << 10  # captions per job scoring their own item canonically


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
        `RetrievalRanks` of int64 numpy arrays. Pessimistic ties (see the package docstring): the
        rank counts every candidate scoring at least as high as the correct one, itself included.
        The full similarity matrix is never built: each tile contributes, per caption, the number
        of visual items scoring at least the correct item's score and, per visual item, the number
        of captions scoring at least its best caption's score.
    """
    t_rows = Rows(text_emb, "text_emb")
    v_rows = Rows(visual_emb, "visual_emb", device=t_rows.device)
    check_pair(t_rows, v_rows)
    t2v = check_text_to_visual(text_to_visual, t_rows.n, v_rows.n)
    text = t_rows.block(0, t_rows.n)
    with TileWorkers(text.device) as workers:
        rows, cols = tile_sizes(t_rows.n, v_rows.n, chunk_size, query_chunk_size, memory_budget, 12, workers.workers)
        counter = _RankCounter(workers, text, t_rows.name, v_rows, t2v, rows)
        for g0 in range(0, v_rows.n, cols):
            counter.add_chunk(g0, min(g0 + cols, v_rows.n))
        t2v_count, v2t_count = counter.counts()
    keep = counter.own.has_caption.cpu().numpy()
    return RetrievalRanks(t2v=t2v_count.cpu().numpy(), v2t=v2t_count.cpu().numpy()[keep], v2t_index=np.nonzero(keep)[0])


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


class _OwnPairs(NamedTuple):
    """The thresholds of both directions: canonical score of every caption with its own item
    (``correct``), and per visual item the best of its captions' scores, that caption (the lowest
    index among equals; ``n_text`` for items without captions) and whether it has any."""

    correct: torch.Tensor
    best_score: torch.Tensor
    best_caption: torch.Tensor
    has_caption: torch.Tensor


def _own_pairs(workers: TileWorkers, text: torch.Tensor, v_rows: Rows, t2v: np.ndarray, target: torch.Tensor) -> _OwnPairs:
    n_t, n_v, device = text.shape[0], v_rows.n, text.device
    correct = torch.empty(n_t, dtype=torch.float64, device=device)

    def score_own_pairs(start):
        stop = min(start + _OWN_PAIR_BATCH, n_t)
        correct[start:stop] = canonical_dot(text[start:stop], v_rows.take(t2v[start:stop]), workers.state(dict))

    workers.run(score_own_pairs, range(0, n_t, _OWN_PAIR_BATCH), work=64 * n_t * text.shape[1])
    best_score = torch.full((n_v,), -math.inf, dtype=torch.float64, device=device)
    best_score.scatter_reduce_(0, target, correct, reduce="amax")
    has_caption = torch.bincount(target, minlength=n_v) > 0
    is_best = correct == best_score[target]
    best_caption = torch.full((n_v,), n_t, dtype=torch.int64, device=device)
    best_caption.scatter_reduce_(0, target[is_best], torch.nonzero(is_best)[:, 0], reduce="amin")
    return _OwnPairs(correct, best_score, best_caption, has_caption)


class _Bands(NamedTuple):
    """One direction's queries against one gallery chunk.

    ``lo``/``hi``: float32 band around each query's ``threshold`` (rounded outwards) outside which
    a tile score decides alone. ``own_query``/``own_candidate``: each query's own pair (caption and
    its item, or item and its best caption), sorted by caption; ``bounds[b]:bounds[b + 1]`` is the
    slice of them in caption block ``b``.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    threshold: torch.Tensor
    own_query: torch.Tensor
    own_candidate: torch.Tensor
    bounds: list[int]


class _Chunk(NamedTuple):
    vectors: torch.Tensor
    start: int
    stop: int
    t2v: _Bands
    v2t: _Bands


class _RankCounter:
    """Pessimistic rank counts of both directions, accumulated chunk by chunk of the gallery.

    Every tile (a caption block x a gallery chunk) serves both directions: per caption, the visual
    items scoring at least its own item; per visual item, the captions scoring at least its best
    caption. Row blocks are disjoint across workers (text-to-visual counts are shared); each worker
    keeps its own visual-to-text counts, summed at the end.
    """

    def __init__(self, workers: TileWorkers, text: torch.Tensor, text_name: str, v_rows: Rows, t2v: np.ndarray,
                 rows: int):
        self.workers, self.text, self.v_rows, self.rows = workers, text, v_rows, rows
        n_t, device = text.shape[0], text.device
        self.target = torch.as_tensor(t2v, device=device)
        self.text_norm = norms(text, text_name)
        self.own = _own_pairs(workers, text, v_rows, t2v, self.target)
        self.rel, self.absolute = error_factor(text.shape[1])
        self.text_max_norm = float(self.text_norm.max())
        self.t2v_count = torch.zeros(n_t, dtype=torch.int64, device=device)
        self.block_starts = torch.arange(0, n_t + rows, rows, device=device).clamp_(max=n_t)

    def add_chunk(self, g0: int, g1: int) -> None:
        """Count the candidates of gallery items ``g0 .. g1``, one caption block per job."""
        chunk = self._chunk(g0, g1)
        n_t, d = self.text.shape
        self.workers.run(functools.partial(self._count_block, chunk), range(len(self.block_starts) - 1),
                         work=n_t * (g1 - g0) * d)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(text-to-visual counts per caption, visual-to-text counts per visual item)."""
        return self.t2v_count, sum(state["v2t"] for state in self.workers.states if "v2t" in state)

    def _chunk(self, g0: int, g1: int) -> _Chunk:
        own = self.own
        vectors = self.v_rows.block(g0, g1)
        chunk_norm = norms(vectors, self.v_rows.name, g0)
        chunk_max_norm = float(chunk_norm.max())
        check_magnitude(self.text_max_norm, chunk_max_norm)
        row_tol = self.rel * chunk_max_norm * self.text_norm + self.absolute
        row_lo = round_down(own.correct - row_tol).unsqueeze(1)
        row_hi = round_up(own.correct + row_tol).unsqueeze(1)
        col_best = own.best_score[g0:g1]
        col_has = own.has_caption[g0:g1]
        col_tol = self.rel * self.text_max_norm * chunk_norm + self.absolute
        # Items without captions get +inf: nothing is counted for them.
        col_lo = torch.where(col_has, round_down(col_best - col_tol), math.inf).unsqueeze(0)
        col_hi = torch.where(col_has, round_up(col_best + col_tol), math.inf).unsqueeze(0)
        own_t = torch.nonzero((self.target >= g0) & (self.target < g1))[:, 0]
        own_t_item = self.target[own_t] - g0
        own_v_item = torch.nonzero(col_has)[:, 0]
        own_v_caption = own.best_caption[g0 + own_v_item]
        order = torch.argsort(own_v_caption)
        own_v_item, own_v_caption = own_v_item[order], own_v_caption[order]
        t_bounds = torch.searchsorted(own_t, self.block_starts).tolist()
        v_bounds = torch.searchsorted(own_v_caption, self.block_starts).tolist()
        return _Chunk(
            vectors, g0, g1,
            t2v=_Bands(row_lo, row_hi, own.correct, own_t, own_t_item, t_bounds),
            v2t=_Bands(col_lo, col_hi, col_best, own_v_item, own_v_caption, v_bounds),
        )

    def _worker_state(self) -> dict:
        state = self.workers.state(dict)
        if "tile" not in state:
            device, n_v = self.text.device, self.v_rows.n
            state["tile"] = Buffer(torch.float32, device)
            state["mask"] = Buffer(torch.float32, device)  # 0/1 floats: float sums count fastest
            state["v2t"] = torch.zeros(n_v, dtype=torch.int64, device=device)  # this worker's partial counts
        return state

    def _count_block(self, chunk: _Chunk, block: int) -> None:
        state = self._worker_state()
        a = block * self.rows
        b = min(a + self.rows, self.text.shape[0])
        width = chunk.stop - chunk.start
        tile = torch.mm(self.text[a:b], chunk.vectors.T, out=state["tile"].view(b - a, width))
        mask = state["mask"].view(b - a, width)

        def rescore(captions, items):  # canonical scores of (caption a + captions[i], item items[i])
            return canonical_dot(self.text.index_select(0, a + captions), chunk.vectors.index_select(0, items), state)

        t2v, own = chunk.t2v, slice(chunk.t2v.bounds[block], chunk.t2v.bounds[block + 1])
        self.t2v_count[a:b] += _count_tile(
            tile, mask, 0, t2v.lo[a:b], t2v.hi[a:b], t2v.threshold[a:b], t2v.own_query[own] - a,
            t2v.own_candidate[own], rescore,
        )
        v2t, own = chunk.v2t, slice(chunk.v2t.bounds[block], chunk.v2t.bounds[block + 1])
        state["v2t"][chunk.start : chunk.stop] += _count_tile(
            tile, mask, 1, v2t.lo, v2t.hi, v2t.threshold, v2t.own_query[own], v2t.own_candidate[own] - a,
            lambda items, captions: rescore(captions, items),
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
        for start in range(0, pq.numel(), PAIR_BATCH):  # bounded memory even if everything ties
            q_pos, g_pos = flagged[pq[start : start + PAIR_BATCH]], pg[start : start + PAIR_BATCH]
            hits = rescore(q_pos, g_pos) >= threshold[q_pos]
            count.index_add_(0, q_pos, hits.to(count.dtype))
    return count
