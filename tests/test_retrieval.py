"""cl2cm_hf.retrieval against brute-force references, chunk invariance, memory bounds, errors.

The reference implements the documented definitions independently: the full score matrix of
canonical scores (float64 products of the float32 vectors, pairwise summation), explicit loops over
queries, pessimistic ranks (candidates scoring >= the correct one), top-k by a stable sort
(lower index first among ties), and the metric formulas written out by hand.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cl2cm_hf import retrieval
from cl2cm_hf.retrieval import metrics_from_ranks, ranks, retrieval_metrics, topk, topk_numpy
from cl2cm_hf.retrieval._tiles import tile_sizes

REPO = Path(__file__).resolve().parent.parent
KEYS = ["t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_mnr", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "v2t_mnr", "sumr"]


# ------------------------------------------------------------------------------ references


def canonical_matrix(a, b) -> np.ndarray:
    """Full (n, m) matrix of canonical scores, in numpy."""
    a = np.asarray(a, dtype=np.float32).astype(np.float64)
    b = np.asarray(b, dtype=np.float32).astype(np.float64)
    prod = a[:, None, :] * b[None, :, :]
    width = 1 << max(0, (prod.shape[2] - 1).bit_length())
    prod = np.concatenate([prod, np.zeros(prod.shape[:2] + (width - prod.shape[2],))], axis=2)
    while prod.shape[2] > 1:
        half = prod.shape[2] // 2
        prod = prod[:, :, :half] + prod[:, :, half:]
    return prod[:, :, 0]


def brute_ranks(text, visual, text_to_visual):
    scores = canonical_matrix(text, visual)
    t2v = np.array([sum(1 for j in range(scores.shape[1]) if scores[i, j] >= scores[i, text_to_visual[i]])
                    for i in range(scores.shape[0])])
    v2t, items = [], []
    for j in range(scores.shape[1]):
        captions = [i for i in range(scores.shape[0]) if text_to_visual[i] == j]
        if not captions:
            continue
        # Best-ranked correct caption: the smallest pessimistic rank over the item's captions.
        v2t.append(min(sum(1 for k in range(scores.shape[0]) if scores[k, j] >= scores[c, j]) for c in captions))
        items.append(j)
    return t2v, np.array(v2t), np.array(items)


def brute_metrics(t2v, v2t):
    out = {}
    for name, r in (("t2v", np.asarray(t2v)), ("v2t", np.asarray(v2t))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(1 for x in r if x <= k) / len(r)
        out[f"{name}_medr"] = float(np.floor(np.median(r)))
        out[f"{name}_mnr"] = float(sum(r)) / len(r)
    out["sumr"] = sum(out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10))
    return out


def brute_topk(queries, gallery, k):
    scores = torch.from_numpy(canonical_matrix(queries, gallery))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # stable: lower index first
    return torch.gather(scores, 1, order).float(), order


def random_problem(seed, quantised, n_visual=None, dim=None, max_captions=3):
    """Visual items with 0..max_captions captions each (shuffled), with ties when `quantised`
    (small multiples of 1/4: exact in float32) and exact duplicates otherwise."""
    rng = np.random.default_rng(seed)
    n_visual = n_visual or int(rng.integers(2, 25))
    dim = dim or int(rng.integers(1, 12))
    counts = rng.integers(0, max_captions + 1, size=n_visual)
    counts[0] = max(counts[0], 1)
    text_to_visual = np.repeat(np.arange(n_visual), counts)
    rng.shuffle(text_to_visual)
    n_text = text_to_visual.size
    if quantised:
        text = rng.integers(-2, 3, size=(n_text, dim)).astype(np.float32) / 4
        visual = rng.integers(-2, 3, size=(n_visual, dim)).astype(np.float32) / 4
    else:
        text = rng.standard_normal((n_text, dim)).astype(np.float32)
        visual = rng.standard_normal((n_visual, dim)).astype(np.float32)
        visual[1::3] = visual[0]  # duplicate items and captions: exact ties of real-valued scores
        text[1::4] = text[0]
    return torch.from_numpy(text), torch.from_numpy(visual), text_to_visual


# ------------------------------------------------------------------------------ ranks and metrics


@pytest.mark.parametrize("seed", range(12))
def test_ranks_match_brute_force_with_ties(seed):
    text, visual, t2v = random_problem(seed, quantised=seed % 2 == 0)
    ref_t2v, ref_v2t, ref_items = brute_ranks(text, visual, t2v)
    for chunk, query_chunk in [(None, None), (1, 1), (2, 3), (5, 2), (7, None), (10_000, 10_000)]:
        got = ranks(text, visual, t2v, chunk, query_chunk_size=query_chunk)
        np.testing.assert_array_equal(got.t2v, ref_t2v, err_msg=f"t2v, chunks {chunk}/{query_chunk}")
        np.testing.assert_array_equal(got.v2t, ref_v2t, err_msg=f"v2t, chunks {chunk}/{query_chunk}")
        np.testing.assert_array_equal(got.v2t_index, ref_items)
    metrics = retrieval_metrics(text, visual, t2v, chunk_size=3)
    assert list(metrics) == KEYS
    expected = brute_metrics(ref_t2v, ref_v2t)
    for key in KEYS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9), key


def test_ties_are_pessimistic():
    # All scores equal (a collapsed model): every candidate ties with the correct one, so every
    # rank is the worst one, never a perfect one.
    text, visual = torch.ones(24, 4), torch.ones(12, 4)
    t2v = np.repeat(np.arange(12), 2)
    got = ranks(text, visual, t2v)
    assert got.t2v.tolist() == [12] * 24
    assert got.v2t.tolist() == [24] * 12
    metrics = retrieval_metrics(text, visual, t2v)
    assert metrics["sumr"] == 0.0 and metrics["t2v_medr"] == 12.0 and metrics["v2t_mnr"] == 24.0


def test_chunk_invariance_on_real_valued_data_with_duplicates():
    # Float32 matmuls of different tile shapes round differently; ranks must not change.
    rng = np.random.default_rng(7)
    visual = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((300, 64)).astype(np.float32)), dim=1)
    visual[100:150] = visual[:50]  # 50 exact duplicates
    t2v = np.repeat(np.arange(300), rng.integers(1, 4, size=300))
    text = torch.nn.functional.normalize(visual[t2v] + 0.3 * torch.randn(t2v.size, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    text[::7] = text[0]
    reference = ranks(text, visual, t2v)
    assert np.all(reference.t2v >= 1) and np.all(reference.v2t >= 1)
    for chunk, query_chunk in [(1, 1000), (7, 50), (64, 64), (333, 17), (299, None)]:
        got = ranks(text, visual, t2v, chunk, query_chunk_size=query_chunk)
        np.testing.assert_array_equal(got.t2v, reference.t2v)
        np.testing.assert_array_equal(got.v2t, reference.v2t)
    ref_t2v, ref_v2t, _ = brute_ranks(text, visual, t2v)
    np.testing.assert_array_equal(reference.t2v, ref_t2v)
    np.testing.assert_array_equal(reference.v2t, ref_v2t)


def test_inputs_numpy_memmap_and_tensor_agree(tmp_path):
    text, visual, t2v = random_problem(3, quantised=True, n_visual=30, dim=6)
    path = tmp_path / "visual.npy"
    np.save(path, visual.numpy())
    memmap = np.load(path, mmap_mode="r")
    expected = ranks(text, visual, t2v)
    for t_in, v_in, index in [
        (text.numpy(), visual.numpy(), t2v.tolist()),
        (text, memmap, torch.as_tensor(t2v)),
        (text.double(), visual.numpy().astype(np.float64), t2v.astype(np.int32)),
    ]:
        got = ranks(t_in, v_in, index, 4)
        np.testing.assert_array_equal(got.t2v, expected.t2v)
        np.testing.assert_array_equal(got.v2t, expected.v2t)


def test_metrics_formula_by_hand():
    metrics = metrics_from_ranks([1, 2, 3, 10, 11], [1, 1, 6, 20])
    assert metrics["t2v_r1"] == 20.0 and metrics["t2v_r5"] == 60.0 and metrics["t2v_r10"] == 80.0
    assert metrics["t2v_medr"] == 3.0 and metrics["t2v_mnr"] == pytest.approx(5.4)
    assert metrics["v2t_r1"] == 50.0 and metrics["v2t_r5"] == 50.0 and metrics["v2t_r10"] == 75.0
    assert metrics["v2t_medr"] == 3.0  # floor(median([1, 1, 6, 20]) = 3.5), NRCCR's convention
    assert metrics["sumr"] == pytest.approx(20 + 60 + 80 + 50 + 50 + 75)
    assert retrieval.recall_at_k(np.array([1, 2, 3, 10]), 2) == 50.0
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks([0, 1], [1])
    with pytest.raises(ValueError, match="empty"):
        metrics_from_ranks([], [1])


def test_distractor_items_without_captions():
    text, visual = torch.eye(3, 4), torch.eye(5, 4)
    got = ranks(text, visual, [0, 1, 2])
    assert got.t2v.tolist() == [1, 1, 1]
    assert got.v2t_index.tolist() == [0, 1, 2] and got.v2t.tolist() == [1, 1, 1]


# ------------------------------------------------------------------------------ top-k


@pytest.mark.parametrize("seed", range(8))
def test_topk_matches_stable_sort_of_full_matrix(seed):
    queries, gallery, _ = random_problem(100 + seed, quantised=seed % 2 == 0, n_visual=60)
    for k in (1, 5, 60):
        ref_scores, ref_index = brute_topk(queries, gallery, k)
        for chunk, margin in [(None, None), (1, 0), (7, 0), (13, None)]:
            scores, index = topk(queries, gallery, k, chunk, margin=margin)
            torch.testing.assert_close(index, ref_index, rtol=0, atol=0, msg=f"k={k} chunk={chunk} margin={margin}")
            torch.testing.assert_close(scores, ref_scores)


@pytest.mark.parametrize("n_queries", [1, 5])
def test_streamed_topk_of_few_queries_keeps_exact_ties(n_queries):
    """A few queries take the streaming pass (the gallery split among the workers, several blocks
    and score segments each under a 1 MiB budget); results equal the stable sort, ties included."""
    rng = np.random.default_rng(n_queries)
    gallery = rng.integers(-2, 3, size=(60_000, 6)).astype(np.float32) / 4  # many exact ties
    gallery[30_000:30_010] = gallery[5]  # duplicates across the workers' ranges
    queries = torch.from_numpy(rng.integers(-2, 3, size=(n_queries, 6)).astype(np.float32) / 4)
    queries[0] = torch.from_numpy(gallery[5])
    for k in (1, 10, 50):
        ref_scores, ref_index = brute_topk(queries, gallery, k)
        for source in (gallery, torch.from_numpy(gallery)):
            scores, index = topk(queries, source, k, chunk_size=1000, memory_budget=2**20)
            torch.testing.assert_close(index, ref_index, rtol=0, atol=0, msg=f"k={k}")
            torch.testing.assert_close(scores, ref_scores)
        assert torch.equal(topk(queries, gallery, k)[1], ref_index)  # default block and segment sizes


@pytest.mark.parametrize("seed", range(6))
def test_numpy_topk_is_the_torch_topk_bit_for_bit(seed, tmp_path):
    """`topk_numpy` (a search without torch) gives `topk`'s scores and rows exactly: ties, duplicates,
    candidates that need a second round (margin 0), a float16 memmap gallery read in small blocks."""
    rng = np.random.default_rng(seed)
    d = (1, 3, 8, 64, 100, 256)[seed]
    gallery = rng.integers(-2, 3, size=(5000, d)).astype(np.float32) / 4 if seed % 2 else rng.standard_normal((5000, d), np.float32)
    gallery[4000:4010] = gallery[7]
    queries = rng.standard_normal((3, d)).astype(np.float32)
    queries[0] = gallery[7]
    stored = np.lib.format.open_memmap(tmp_path / "g.npy", "w+", np.float16, gallery.shape)
    stored[:] = gallery
    for source in (gallery, stored):
        for k, block, margin in ((1, None, None), (10, 333, 0), (50, 4096, 2), (5000, None, None)):
            scores, rows = topk_numpy(queries, source, k, block_rows=block, margin=margin)
            ref_scores, ref_rows = topk(queries, source, k)
            assert np.array_equal(rows, ref_rows.numpy()) and np.array_equal(scores, ref_scores.numpy()), (k, block, margin)


def test_numpy_topk_errors_name_the_input():
    gallery = np.ones((4, 3), np.float32)
    gallery[2, 1] = np.nan
    with pytest.raises(ValueError, match="gallery has non-finite values .* row 2"):
        topk_numpy(np.ones((1, 3)), gallery, 1, block_rows=2)
    with pytest.raises(ValueError, match="dims differ"):
        topk_numpy(np.ones((1, 2)), np.ones((4, 3)), 1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        topk_numpy(np.ones((1, 3)), np.ones((4, 3)), 5)


def test_topk_equals_torch_topk_without_ties():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(50, 32, generator=generator), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(3000, 32, generator=generator), dim=1)
    scores, index = topk(queries, gallery.numpy(), 10, chunk_size=256)
    ref_scores, ref_index = torch.topk(queries @ gallery.T, 10, dim=1)
    torch.testing.assert_close(index, ref_index, rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ memory


def test_memory_stays_bounded_on_a_large_gallery(tmp_path):
    """200k x 64 gallery (a memmap): the similarity matrices would take 400 MB (top-k of 500
    queries) and 400 MB (ranks of 500 captions); the peak RSS may grow by working tiles only."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        import numpy as np, torch
        sys.path.insert(0, {str(REPO)!r})
        from cl2cm_hf import retrieval
        rng = np.random.default_rng(0)
        np.save("gallery.npy", rng.standard_normal((200_000, 64), dtype=np.float32))
        gallery = np.load("gallery.npy", mmap_mode="r")
        queries = torch.from_numpy(rng.standard_normal((1000, 64), dtype=np.float32))
        t2v = rng.integers(0, 200_000, size=500)
        retrieval.topk(queries[:10], gallery[:5000], 5); retrieval.ranks(queries[:10], gallery[:5000], t2v[:10] % 5000)
        # File pages of the memmap count in the RSS but are the gallery itself: touch them first.
        float(np.asarray(gallery).sum())
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base = peak()
        retrieval.topk(queries[:500], gallery, 10, chunk_size=4096)
        after_topk = peak()
        fixed = retrieval.ranks(queries[:500], gallery, t2v, chunk_size=4096)
        after_ranks = peak()
        auto = retrieval.ranks(queries[:500], gallery, t2v, memory_budget=16 * 2**20)
        after_auto = peak()
        assert (fixed.t2v == auto.t2v).all() and (fixed.v2t == auto.v2t).all()
        print(json.dumps({{"topk": after_topk - base, "ranks": after_ranks - base, "auto": after_auto - base}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    growth = json.loads(out.stdout.strip().splitlines()[-1])
    for _name, grown in growth.items():
        assert grown < 96 * 2**20, growth


def test_tile_sizes_follow_the_memory_budget():
    rows, cols = tile_sizes(1000, 1_000_000, None, None, 2**30, bytes_per_element=16)
    assert rows * cols * 16 <= 2**30 and rows == 1000
    rows, cols = tile_sizes(25_000, 5_000, None, None, 4 * 2**20, bytes_per_element=12)
    assert rows * cols * 12 <= 4 * 2**20
    with pytest.raises(ValueError, match="chunk_size"):
        tile_sizes(10, 10, 0, None, None, 12)
    with pytest.raises(ValueError, match="memory_budget"):
        tile_sizes(10, 10, None, None, 10, 12)


def test_thread_and_precision_settings_are_restored():
    """Tiles run single-threaded ops in full float32 inside a context; the caller's settings come back."""
    text, visual, t2v = random_problem(5, quantised=False, n_visual=40, dim=8)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        torch.set_num_threads(2)
        torch.set_float32_matmul_precision("medium")
        ranks(text, visual, t2v)
        topk(text, visual, 3)
        assert torch.get_num_threads() == 2 and torch.get_float32_matmul_precision() == "medium"
        bad = visual.clone()
        bad[-1, 0] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):  # raised inside the context
            ranks(text, bad, t2v)
        assert torch.get_num_threads() == 2 and torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)


# ------------------------------------------------------------------------------ errors


def test_errors_are_clear():
    text, visual = torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="embedding dims differ"):
        ranks(text, torch.randn(3, 7), [0, 1, 2, 0])
    with pytest.raises(ValueError, match="out of range"):
        ranks(text, visual, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(text, visual, [0, 1, -1, 2])
    with pytest.raises(ValueError, match="one visual index per caption"):
        ranks(text, visual, [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        ranks(text, visual, [0.5, 1, 2, 0])
    with pytest.raises(ValueError, match="2-D"):
        ranks(torch.randn(4), visual, [0, 1, 2, 0])
    bad = text.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*row 2"):
        ranks(bad, visual, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="embedding dims differ"):
        topk(text, torch.randn(3, 7), 1)
    with pytest.raises(ValueError, match="k must be"):
        topk(text, visual, 4)


# ------------------------------------------------------------------------------ faiss


def test_faiss_index_recall():
    pytest.importorskip("faiss", reason="faiss-cpu not installed (extra 'faiss')")
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(2000, 32, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(gallery[:100] + 0.1 * torch.randn(100, 32, generator=generator), dim=1)
    flat = retrieval.build_faiss_index(gallery, "flat")
    assert retrieval.faiss_recall_at_k(flat, queries, gallery, k=10) == 1.0
    # Random 32-d data is a hard case for IVF (neighbours spread over many lists): a sanity bound.
    for kind, floor in (("hnsw", 0.9), ("ivf_flat", 0.4)):
        index = retrieval.build_faiss_index(gallery.numpy(), kind, chunk_size=512)
        recall = retrieval.faiss_recall_at_k(index, queries, gallery, k=10)
        assert floor < recall <= 1.0, (kind, recall)
        scores, found = retrieval.faiss_search(index, queries, 5)
        assert found.shape == (100, 5) and found.dtype == torch.int64
    with pytest.raises(ValueError, match="index_type"):
        retrieval.build_faiss_index(gallery, "lsh")
