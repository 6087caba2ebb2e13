"""Retrieval evaluation: embeddings in, ranks and metrics out, in bounded memory.

Modules, one job each
---------------------
``metrics``
    The metric formula (R@K, MedR, MnR, SumR from ranks) and the one list of metric keys; the
    `evaluate` module in ``cl2cm_hf/metrics/retrieval_recall`` (``METRIC_MODULE_PATH``) wraps it.
``ranking``
    ``ranks(text_emb, visual_emb, text_to_visual, chunk_size=None)``: 1-based text-to-visual rank
    of every caption's item and visual-to-text rank of every visual item's best-ranked correct
    caption (NRCCR's protocol, several captions per item); ``retrieval_metrics`` from them.
``search``
    ``topk(queries, gallery, k, chunk_size=None)``: exact top-k gallery items per query by inner
    product, as ``(scores, indices)`` tensors.
``search_numpy``
    ``topk_numpy``: the same answer as `topk`, bit for bit, in numpy, for a few queries in a process
    that does not import torch (a one-call search).
``faiss_index``, ``faiss_import``
    ``build_faiss_index``, ``faiss_search``, ``faiss_recall_at_k``: optional approximate search
    (``pip install cl2cm-hf[faiss]``) and its recall against `topk`; ``import_faiss`` with the hint.
``_inputs``, ``_bounds``, ``_canonical``, ``_tiles`` (private)
    Input adaptation and checks; the float32 error bound and k's range (no torch); canonical float64
    scores; tile sizes, buffers and the worker threads.

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
threads as torch has intra-op threads, each running single-threaded ops (see
``_tiles.TileWorkers``); thread and matmul-precision settings change only inside that context.
"""

from cl2cm_hf.lazy_exports import lazy_exports

# Name -> its module, imported on first use (PEP 562): the numpy search and the metrics do not import torch.
_EXPORTS = {
    "DEFAULT_MEMORY_BUDGET": "_tiles",
    "build_faiss_index": "faiss_index", "faiss_recall_at_k": "faiss_index", "faiss_search": "faiss_index",
    "import_faiss": "faiss_import",
    "DIRECTIONS": "metrics", "METRIC_KEYS": "metrics", "METRIC_MODULE_PATH": "metrics", "RECALL_KS": "metrics",
    "metrics_from_ranks": "metrics", "recall_at_k": "metrics",
    "RetrievalRanks": "ranking", "ranks": "ranking", "retrieval_metrics": "ranking",
    "topk": "search", "topk_numpy": "search_numpy",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DIRECTIONS",
    "METRIC_KEYS",
    "METRIC_MODULE_PATH",
    "RECALL_KS",
    "RetrievalRanks",
    "build_faiss_index",
    "faiss_recall_at_k",
    "faiss_search",
    "import_faiss",
    "metrics_from_ranks",
    "ranks",
    "recall_at_k",
    "retrieval_metrics",
    "topk",
    "topk_numpy",
]
