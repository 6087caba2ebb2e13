"""Issue 24: the compressed index's choice rule (codes and nlist for a RAM budget) and the nprobe picked
at build time from the recall measured on held-out rows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.ann import TARGET_RECALL, ShardRows, choose_factory, choose_nprobe, nprobe_ladder


def test_choice_rule_takes_the_largest_fast_scan_codes_that_fit_the_budget():
    big = choose_factory(10_000_000, 256, 300 * 10_000_000)  # the 4 GB serving goal at 10M
    assert big["factory"] == "IVF4096_HNSW32,PQ128x4fs" and big["code_bytes"] == 64
    assert big["nprobe_ladder"] == [16, 32, 64, 128, 256, 512]
    assert choose_factory(10_000_000, 256, 480 << 20)["factory"] == "IVF4096_HNSW32,PQ64x4fs"
    assert choose_factory(1_000_000, 256, 30 << 20)["factory"] == "IVF1024_HNSW32,PQ32x4fs"
    assert choose_factory(10_000, 256, 1 << 30)["factory"] == "IVF128,Flat"  # small: exact float32 codes
    assert choose_factory(100_000, 256, 1 << 30)["factory"] == "IVF256,PQ128x4fs"  # Flat fits, but n > FLAT_ROWS
    with pytest.raises(CL2CMError, match=r"smallest index \(PQ8x4fs\) needs 13 MiB"):
        choose_factory(1_000_000, 256, 1 << 20)


@pytest.mark.parametrize("n", [1_000, 250_000, 10_000_000])
@pytest.mark.parametrize("per_item", [14, 20, 40, 72, 300])
def test_chosen_codes_fit_and_the_next_larger_would_not(n, per_item):
    d, budget = 256, n * per_item
    try:
        choice = choose_factory(n, d, budget)
    except CL2CMError as error:
        assert int(re.search(r"needs (\d+) MiB", str(error)).group(1)) << 20 > budget
        return
    nlist, factory = choice["nlist"], choice["factory"]
    assert choice["expected_bytes"] <= budget and nlist * 39 <= n
    if "x4fs" in factory and int(factory.split(",PQ")[1].split("x")[0]) < d // 2:
        m = int(factory.split(",PQ")[1].split("x")[0])  # twice the sub-quantizers: m bytes of codes a vector
        assert (n + 32 * nlist) * (m + 8) + 4 * d * nlist > budget


def test_nprobe_ladder_and_choice():
    assert nprobe_ladder(4096) == [16, 32, 64, 128, 256, 512]
    assert nprobe_ladder(64) == nprobe_ladder(8) == [1, 2, 4, 8] and nprobe_ladder(1) == [1]
    assert choose_nprobe({8: 0.80, 16: 0.96, 32: 0.99}) == 16  # the smallest that reaches the target
    assert choose_nprobe({8: 0.80, 16: 0.90, 32: 0.93}) == 32  # none does: the best measured
    assert choose_nprobe({8: 0.93, 16: 0.93}) == 8  # a tie: the cheaper one
    assert choose_nprobe({4: 0.5, 8: 0.96}, target=0.4) == 4


def _clustered(n: int, d: int, clusters: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    data = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


@pytest.mark.parametrize("noise", [1.0, 2.0])  # 1.0: the target is reached at nprobe 4 of 64; 2.0: never
def test_build_picks_nprobe_on_held_out_rows_and_stores_it(tmp_path, noise):
    faiss = pytest.importorskip("faiss")
    from cl2cm_hf.search.ann import ANN_FILE, AnnIndex, build_ann

    data = _clustered(4000, 32, 64, noise)
    rows = ShardRows([data.astype(np.float16)])
    info = build_ann(rows, tmp_path, budget=4000 * 24 + 64 * 32 * 24 + 4 * 32 * 64, recall_queries=300)
    assert info["factory"] == "IVF64,PQ16x4fs" and info["expected_bytes"] <= info["budget_bytes"]
    curve = {int(p): r for p, r in info["nprobe_recall@10_rerank"].items()}
    ladder = nprobe_ladder(64)
    assert list(curve) == ladder[: len(curve)]  # tried smallest first, in the ladder's order
    assert all(r < TARGET_RECALL for r in list(curve.values())[:-1])  # stopped at the first that reached the target
    assert info["nprobe"] == choose_nprobe(curve) and info["recall@10_rerank"] == curve[info["nprobe"]]
    assert info["recall@10_rerank"] >= min(TARGET_RECALL, max(curve.values()))
    assert len(curve) >= 2  # nprobe 1 is not enough on this data: the ladder was climbed
    if noise == 2.0:  # the target is out of reach: the whole ladder measured, the best one kept
        assert list(curve) == ladder and info["recall@10_rerank"] == max(curve.values()) < TARGET_RECALL
    assert info["recall@10_rerank"] >= info["recall@10"] and info["recall_queries"] == 300
    assert faiss.extract_index_ivf(AnnIndex.load(tmp_path).index).nprobe == info["nprobe"]
    assert (tmp_path / ANN_FILE).stat().st_size == info["bytes"]


def test_held_out_recall_leaves_the_query_row_out():
    """A held-out row is in the index and finds itself: counting it would add up to 0.1 to recall@10."""
    from cl2cm_hf.search.ann import _others, _recall

    own = np.array([7, 3])
    found = np.array([[7, 1, 2], [5, 3, 9]])  # row 7 found itself first; row 3 second
    assert _others(found, own, 2).tolist() == [[1, 2], [5, 9]]
    truth = _others(np.array([[7, 1, 4], [3, 5, 6]]), own, 2)
    assert _recall(_others(found, own, 2), truth) == 0.5  # 1 and 5 of (1, 4) and (5, 6); self not counted


def test_rows_of_a_memory_mapped_npy_are_read_without_the_mapping(tmp_path):
    data = np.arange(60, dtype=np.float16).reshape(20, 3)
    np.save(tmp_path / "a.npy", data)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = ShardRows([mapped, mapped[5:9]])  # a slice of a memmap is read through the mapping, as before
    np.testing.assert_array_equal(rows.take([19, 0, 7, 20, 23]), data[[19, 0, 7, 5, 8]].astype(np.float32))
    import cl2cm_hf.search.ann as ann

    read = ann._read_rows(mapped, np.array([2, 11]))
    assert not isinstance(read, np.memmap) and read.base is not mapped.base  # copied out by pread, not a view
    np.testing.assert_array_equal(read, data[[2, 11]])
