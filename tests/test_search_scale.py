"""Issue 24: a build holds one shard of embeddings at a time, the compressed IVF-PQ index (chosen for a RAM
budget, served memory-mapped, re-ranked exactly), and a search that does not re-hash unchanged weights."""

from __future__ import annotations

import json
import os
import weakref

import numpy as np
import pytest
import torch
from conftest import features_config, save_features_world

from cl2cm_hf.data import VisualFeatureStore
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search import SearchIndex, build_index, fingerprint, index_build, shards, sources
from cl2cm_hf.search.ann import ShardRows

ROWS = 40


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return save_features_world(tmp_path_factory.mktemp("scale"), ROWS)


def test_build_reads_one_shard_at_a_time_and_writes_in_blocks(features, tmp_path, monkeypatch):
    calls = []
    rows = shards.EmbeddingCache.rows

    def spy(self, places):
        block = rows(self, places)
        held = 0 if self._held is None else len(self._held[1])
        calls.append((len(places), self.shard_loads, held))
        return block

    monkeypatch.setattr(shards.EmbeddingCache, "rows", spy)
    monkeypatch.setattr(index_build, "WRITE_ROWS", 4)
    build_index(features / "model", tmp_path / "index", features=features / "store", batch_size=4, chunk_size=8,
                num_workers=0, faiss="none", progress=False, query_encoder=False)
    blocks = [c for c in calls if c[0] > 1]
    assert blocks and max(c[0] for c in blocks) == 4  # embeddings.npy is filled 4 rows at a time
    assert max(c[2] for c in calls) <= 8  # never more than one shard (chunk_size rows) held
    assert calls[-1][1] == ROWS // 8  # 5 shards, each read once: no shard is read twice
    built = SearchIndex.load(tmp_path / "index")
    reference = build_index(features / "model", tmp_path / "one_shard", features=features / "store", batch_size=64,
                            chunk_size=64, num_workers=0, faiss="none", progress=False, query_encoder=False)
    assert reference.count == ROWS and isinstance(built.embeddings, np.memmap)
    np.testing.assert_array_equal(built.embeddings, SearchIndex.load(tmp_path / "one_shard").embeddings)
    assert built.ids == [f"item{i:03d}" for i in range(ROWS)] and built.ids.index("item007") == 7


def _live_items(monkeypatch) -> dict:
    """Counts the `Item`s alive at once (each item of a build is one): the peak is what a build holds."""
    from cl2cm_hf.search import sources

    live = {"now": 0, "peak": 0}
    init = sources.Item.__init__

    def gone():
        live["now"] -= 1

    def counted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        weakref.finalize(self, gone)

    monkeypatch.setattr(sources.Item, "__init__", counted)
    return live


@pytest.mark.parametrize("rows", [40, 200])
def test_build_holds_a_window_of_items_whatever_the_number_of_rows(features, tmp_path, monkeypatch, rows):
    """Issue 24: with windows of 8 items, a build (first and rerun) never holds more than a few windows of
    items, for 40 rows as for 200; the store's ids are not sorted and come back sorted."""
    window = 8
    monkeypatch.setattr(index_build, "WINDOW", window)
    monkeypatch.setattr(index_build, "WRITE_ROWS", window)
    ids = [f"item{i:03d}" for i in np.random.default_rng(rows).permutation(rows)]
    VisualFeatureStore.from_arrays(ids, torch.randn(rows, features_config().visual_feature_dim)).save(tmp_path / "store")
    live = _live_items(monkeypatch)
    kwargs = dict(features=tmp_path / "store", batch_size=4, chunk_size=4, num_workers=0, faiss="none", progress=False, query_encoder=False)
    first = build_index(features / "model", tmp_path / "index", **kwargs)
    assert first.count == first.encoded == rows and live["peak"] <= 3 * window
    built = SearchIndex.load(tmp_path / "index")
    assert list(built.ids) == sorted(ids)
    live["peak"] = live["now"]
    # a rerun with another setting: the folder is written again, every row read from the previous index
    again = build_index(features / "model", tmp_path / "index", ann_budget_mb=512, **kwargs)
    assert again.reused == rows and again.encoded == 0 and live["peak"] <= 3 * window
    np.testing.assert_array_equal(SearchIndex.load(tmp_path / "index").embeddings, built.embeddings)
    monkeypatch.undo()
    whole = build_index(features / "model", tmp_path / "whole", **kwargs)  # one window
    np.testing.assert_array_equal(SearchIndex.load(tmp_path / "whole").embeddings, built.embeddings)
    assert whole.count == rows


def test_a_dataset_is_listed_a_window_at_a_time(tmp_path, monkeypatch):
    """A `datasets` folder's items come `window` rows at a time, embedded images read `IMAGE_ROWS` at a time:
    the same items (ids, keys, captions, rows, the row without an image) as in one block, and a bounded
    number of them alive while the blocks are consumed."""
    from datasets import Dataset, Features, Image, Value

    signature = b"\x89PNG\r\n\x1a\n"  # never decoded: the listing hashes the bytes
    rows = 50
    images = [None if i == 7 else {"bytes": signature + bytes([i]), "path": f"p{i}.png"} for i in range(rows)]
    Dataset.from_dict({"id": [f"d{i:02d}" for i in range(rows)], "image": images, "caption": [f"c{i}" for i in range(rows)]},
                      features=Features({"id": Value("string"), "image": Image(), "caption": Value("string")})
                      ).save_to_disk(str(tmp_path / "dataset"))
    monkeypatch.setattr(sources, "IMAGE_ROWS", 3)
    whole = [item for block in sources.dataset_items(tmp_path / "dataset", 1000)[0] for item in block]
    assert [(i.id, i.caption, i.row) for i in whole] == [(f"d{i:02d}", f"c{i}", i) for i in range(rows)]
    assert whole[7].problem == "no image in this row" and whole[8].key.startswith("sha256:")
    live = _live_items(monkeypatch)
    seen = []
    for block in sources.dataset_items(tmp_path / "dataset", 8)[0]:
        assert len(block) <= 8
        seen += [(i.id, i.path, i.key, i.caption, i.row, i.problem) for i in block]
        del block
    assert seen == [(i.id, i.path, i.key, i.caption, i.row, i.problem) for i in whole]
    assert live["peak"] <= 2 * 8


def test_a_repeated_id_in_another_block_of_the_store_is_refused(features, tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file

    monkeypatch.setattr(index_build, "WINDOW", 4)  # rows 1 and 9: two blocks of the store
    ids = [f"item{i:03d}" for i in range(10)]
    VisualFeatureStore.from_arrays(ids, torch.randn(10, features_config().visual_feature_dim)).save(tmp_path / "store")
    tensors = tmp_path / "store" / "features.safetensors"
    save_file(load_file(tensors), tensors)  # no ids digest: ids.json is taken as it is
    (tmp_path / "store" / "ids.json").write_text(json.dumps({"ids": ids[:9] + ["item001"]}))
    with pytest.raises(CL2CMError, match="'item001' appears twice"):
        build_index(features / "model", tmp_path / "index", features=tmp_path / "store", num_workers=0, faiss="none", progress=False, query_encoder=False)
    assert not (tmp_path / "index" / "metadata.json").exists()


def test_shard_rows_take_any_order():
    a, b = np.arange(12, dtype=np.float16).reshape(6, 2), np.arange(12, 20, dtype=np.float32).reshape(4, 2)
    rows = ShardRows([a, np.zeros((0, 2)), b])
    assert rows.n == 10 and rows.d == 2
    np.testing.assert_array_equal(rows.take([9, 0, 6, 5]), np.array([[18, 19], [0, 1], [12, 13], [10, 11]], np.float32))
    assert [start for start, _ in rows.blocks(4)] == [0, 4, 6]


def test_ivfpq_index_built_from_rows_memory_mapped_and_reranked(features, tmp_path):
    faiss = pytest.importorskip("faiss")
    from cl2cm_hf.search.ann import ANN_FILE, AnnIndex, build_ann, exact_top

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 32)).astype(np.float32)
    data = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    rows = ShardRows([data[:1800].astype(np.float16), data[1800:].astype(np.float16)])
    info = build_ann(rows, tmp_path, budget=3000 * 40 + 4 * 32 * 64, recall_queries=200)
    assert info["factory"] == "IVF64,PQ16x4fs" and info["recall_queries"] == 200
    assert info["recall@10_rerank"] >= info["recall@10"] and info["recall@10_rerank"] > 0.8
    served = AnnIndex.load(tmp_path, rows)
    assert served.ntotal == 3000 and (tmp_path / ANN_FILE).stat().st_size == info["bytes"]
    queries = rows.take([5, 2500])
    scores, found = served.search(queries, 10, rerank=3000)  # every candidate re-scored: exact
    np.testing.assert_array_equal(found, exact_top(rows, queries, 10))
    assert faiss.extract_index_ivf(served.index).nprobe == info["nprobe"]


def test_ivfpq_through_build_index_and_search_index(features, tmp_path):
    pytest.importorskip("faiss")
    report = build_index(features / "model", tmp_path / "index", features=features / "store", num_workers=0,
                         faiss="ivfpq", ann_budget_mb=1, progress=False, query_encoder=False)
    info = report.metadata["faiss"]
    assert info["type"] == "ivfpq" and info["factory"] == "IVF1,Flat" and info["recall@10_rerank"] == 1.0
    index = SearchIndex.load(tmp_path / "index")
    queries = index.embeddings[:3]
    approx = [[h.id for h in hits] for hits in index.search_embeddings(queries, 5)]
    assert approx == [[h.id for h in hits] for hits in index.search_embeddings(queries, 5, exact=True)]


def test_unchanged_checkpoint_is_not_hashed_again(features, tmp_path, monkeypatch):
    build_index(features / "model", tmp_path / "index", features=features / "store", num_workers=0, faiss="none", progress=False, query_encoder=False)

    def hashed(model):
        raise AssertionError("model_fingerprint called")

    monkeypatch.setattr(fingerprint, "model_fingerprint", hashed)
    assert len(SearchIndex.load(tmp_path / "index")) == ROWS  # same files, same stat: no hashing
    weights = features / "model" / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(AssertionError, match="model_fingerprint called"):
            SearchIndex.load(tmp_path / "index")  # a touched file is checked by its content
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
