"""Issue 24, item 5: the index's query encoder (``<index>/query_encoder/``, the text tower as ONNX).
It answers text queries as the checkpoint does, stands in for it only while the checkpoint's files
are the build's, and a build that cannot write it says why and leaves a searchable index."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import save_features_world

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search import BrokenIndexError, ModelMismatchError, SearchIndex, UnknownQueryError, build_index, load_checkpoint
from cl2cm_hf.search import query_encoder as query_encoder_module
from cl2cm_hf.search.query_encoder import MODEL_FILE, QUERY_ENCODER_DIR

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROWS = 40
SETTINGS = dict(num_workers=0, faiss="none", progress=False)
QUERIES = ["ein roter Hund", "a man plays guitar on the street", "dog",
           "zwei Kinder spielen am Strand mit einem Ball und einem Hund " * 6]  # past the 64 tokens a query keeps


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A features checkpoint with a text prefix (e5's ``query: ``) and its index, with the query encoder."""
    root = save_features_world(tmp_path_factory.mktemp("encoder"), ROWS, text_prefix="query: ")
    report = build_index(root / "model", root / "index", features=root / "store", **SETTINGS)
    assert report.metadata["query_encoder"]["written"], report.metadata["query_encoder"]
    return root


def _hits(hits):
    return [(h.rank, h.id) for h in hits], np.array([h.score for h in hits])


def test_the_encoder_answers_as_the_checkpoint(world):
    fast = SearchIndex.load(world / "index")
    assert fast.query_encoder is not None and fast._model is None  # the checkpoint is not read for text
    model, processor = load_checkpoint(world / "model")
    slow = SearchIndex.load(world / "index", model=model, processor=processor)
    assert slow.query_encoder is None
    np.testing.assert_allclose(fast.encode_queries(QUERIES), slow.encode_queries(QUERIES), atol=1e-6, rtol=0)
    for query in QUERIES:
        (fast_ranks, fast_scores), (slow_ranks, slow_scores) = _hits(fast.search(query, ROWS)), _hits(slow.search(query, ROWS))
        order_kept = np.all(np.diff(slow_scores) < -1e-6)  # no near-tie that 1e-7 could reorder
        assert not order_kept or fast_ranks == slow_ranks
        np.testing.assert_allclose(fast_scores, np.sort(slow_scores)[::-1], atol=1e-6)
    for index in (fast, slow):
        with pytest.raises(UnknownQueryError, match="no word"):
            index.search("ꙮꙮ ꙮ")
    assert fast._model is None
    assert fast.search_item("item003", 3)[0].id == "item003"  # "more like this" needs no model either
    assert fast.model is not None and fast._model is not None  # read on first use


def test_token_ids_are_the_processors(world):
    fast = SearchIndex.load(world / "index")
    _, processor = load_checkpoint(world / "model")
    for query in QUERIES:
        assert fast.query_encoder.token_ids(query) == processor(text=[query], truncation=True, max_length=64)["input_ids"][0]
    assert fast.query_encoder.token_ids(QUERIES[-1])[-1] == processor.tokenizer.sep_token_id  # truncated as the processor does


def test_a_changed_checkpoint_is_read_and_checked_again(world, tmp_path):
    import shutil

    shutil.copytree(world / "model", tmp_path / "model")
    build_index(tmp_path / "model", tmp_path / "index", features=world / "store", **SETTINGS)
    os.utime(tmp_path / "model" / "config.json")  # touched, same content: the files are not the build's any more
    touched = SearchIndex.load(tmp_path / "index")
    assert touched.query_encoder is None and touched._model is not None and touched.model_mismatch is None
    model, _ = load_checkpoint(tmp_path / "model")
    with torch.no_grad():
        model.text_model.projection.weight.mul_(-1)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ModelMismatchError, match="changed since"):
        SearchIndex.load(tmp_path / "index")
    allowed = SearchIndex.load(tmp_path / "index", allow_model_mismatch=True)
    assert allowed.query_encoder is None and allowed.model_mismatch  # the new weights answer, with the warning


def test_without_onnxruntime_the_build_says_why_and_the_index_is_searched(world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    report = build_index(world / "model", tmp_path / "index", features=world / "store", **SETTINGS)
    assert report.metadata["query_encoder"] == {"written": False, "reason": "onnxruntime is not installed "
                                                "(pip install 'cl2cm-hf[onnx]')"}
    assert not (tmp_path / "index" / QUERY_ENCODER_DIR).exists()
    monkeypatch.undo()
    index = SearchIndex.load(tmp_path / "index")
    assert index.query_encoder is None and index.search("ein Hund", 3)


def test_an_export_that_fails_its_check_leaves_nothing(world, tmp_path, monkeypatch):
    monkeypatch.setattr(query_encoder_module, "TOLERANCE", -1.0)
    report = build_index(world / "model", tmp_path / "index", features=world / "store", **SETTINGS)
    assert report.metadata["query_encoder"]["written"] is False
    assert "ONNX and eager embeddings differ by" in report.metadata["query_encoder"]["reason"]
    assert not (tmp_path / "index" / QUERY_ENCODER_DIR).exists()


def test_a_damaged_encoder_is_a_broken_index(world, tmp_path):
    import shutil

    shutil.copytree(world / "index", tmp_path / "index")
    (tmp_path / "index" / QUERY_ENCODER_DIR / MODEL_FILE).write_bytes(b"not onnx")
    with pytest.raises(BrokenIndexError, match="query encoder cannot be read"):
        SearchIndex.load(tmp_path / "index")


def test_asking_for_it_rebuilds_and_an_unchanged_rerun_keeps_it(world, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(CL2CMError, match="query_encoder must be True or False"):
        build_index(world / "model", out, features=world / "store", query_encoder="no", **SETTINGS)
    build_index(world / "model", out, features=world / "store", query_encoder=False, **SETTINGS)
    assert not (out / QUERY_ENCODER_DIR).exists()
    assert json.loads((out / "metadata.json").read_text())["query_encoder_request"] is False
    report = build_index(world / "model", out, features=world / "store", **SETTINGS)
    assert report.reused == ROWS and report.metadata["query_encoder"]["written"]
    written = (out / QUERY_ENCODER_DIR / MODEL_FILE).stat().st_mtime_ns
    build_index(world / "model", out, features=world / "store", **SETTINGS)
    assert (out / QUERY_ENCODER_DIR / MODEL_FILE).stat().st_mtime_ns == written  # kept, not exported again


def test_concurrent_first_uses_read_the_checkpoint_once(world):
    """The page's request threads: two image queries at once on an index loaded with its encoder."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    index = SearchIndex.load(world / "index")
    load, calls = index._load_model, []

    def slow_load():
        calls.append(1)
        time.sleep(0.2)
        return load()

    index._load_model = slow_load
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: index.model, range(4)))
    assert len(calls) == 1 and models[0] is not None and all(m is models[0] for m in models)
