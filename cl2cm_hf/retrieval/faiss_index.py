"""Optional approximate inner-product search with faiss (``pip install 'cl2cm-hf[faiss]'``) and
its recall against the exact `topk`."""

from __future__ import annotations

import math

import numpy as np
import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval._canonical import norms
from cl2cm_hf.retrieval._inputs import Rows
from cl2cm_hf.retrieval.faiss_import import import_faiss
from cl2cm_hf.retrieval.search import topk


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
    faiss = import_faiss()
    rows = Rows(gallery, "gallery", device=torch.device("cpu"))
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
        raise CL2CMError(f"index_type must be 'hnsw', 'ivf_flat' or 'flat', got {index_type!r}")
    for start in range(0, rows.n, int(chunk_size)):
        block = rows.block(start, min(start + int(chunk_size), rows.n))
        norms(block, rows.name, start)  # rejects NaN / inf
        index.add(_float32_numpy(block))
    return index


def faiss_search(index, queries, k: int):
    """``(scores, indices)`` float32/int64 tensors of the index's approximate top-`k`."""
    rows = Rows(queries, "queries", device=torch.device("cpu"))
    if rows.d != index.d:
        raise CL2CMError(f"embedding dims differ: queries have d={rows.d} but the index has d={index.d}")
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
