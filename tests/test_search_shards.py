"""Issue 24: an index made of shards (one per machine or build job) answers with exactly the top k of one
index over the same items, through `SearchIndex` and ``cl2cm-search``; shards of another model are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_wordpiece_tokenizer, features_config

from cl2cm_hf import CL2CMCrossModalModel, build_processor
from cl2cm_hf.cli.search import main as search_main
from cl2cm_hf.cli.shards import main as shards_main
from cl2cm_hf.data import VisualFeatureStore
from cl2cm_hf.search import BrokenIndexError, SearchIndex, build_index
from cl2cm_hf.search.sharded import ShardMismatchError, merge_hits, write_sharded

PARTS = (0, 13, 23, 30)  # three shards of 13, 10 and 7 rows


def _checkpoint(folder, seed):
    torch.manual_seed(seed)
    CL2CMCrossModalModel(features_config()).save_pretrained(folder)
    build_processor(build_wordpiece_tokenizer(), "").save_pretrained(folder)


def _index(model, store, out):
    # one item a batch: a batch's size can change an embedding's last float bit (BLAS blocking), in one index
    # as in shards; encoded alone, every item has the same embedding in both and the merge is compared exactly
    build_index(model, out, features=store, batch_size=1, num_workers=0, faiss="none", progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    _checkpoint(root / "model", 0)
    ids = [f"item{i:03d}" for i in range(PARTS[-1])]
    torch.manual_seed(1)
    features = torch.randn(PARTS[-1], features_config().visual_feature_dim)
    features[20] = features[3]  # equal scores across shards: the tie goes to the earlier shard, as in one index
    VisualFeatureStore.from_arrays(ids, features).save(root / "store")
    _index(root / "model", root / "store", root / "whole")
    for part, (start, stop) in enumerate(zip(PARTS, PARTS[1:])):
        VisualFeatureStore.from_arrays(ids[start:stop], features[start:stop]).save(root / f"store{part}")
        _index(root / "model", root / f"store{part}", root / f"part{part}")
    assert shards_main([str(root / "sharded"), *(str(root / f"part{p}") for p in range(3))]) == 0
    return root


def _hits(hits):
    return [(h.rank, h.id, h.score) for h in hits]


def test_three_shards_give_the_one_index_top_k(world):
    whole, sharded = SearchIndex.load(world / "whole"), SearchIndex.load(world / "sharded")
    assert len(sharded) == 30 and sharded.ids == whole.ids and sharded.metadata["count"] == 30 and sharded.embeddings is None
    assert sharded.metadata["created"] == max(shard.metadata["created"] for shard in sharded.shards)
    assert [len(s) for s in sharded.shards] == [13, 10, 7] and sharded.ids[-1] == "item029" and sharded.ids[13] == "item013"
    for k in (1, 5, 30):
        assert _hits(sharded.search("ein hund spielt", k)) == _hits(whole.search("ein hund spielt", k))
        assert _hits(sharded.search_item("item020", k)) == _hits(whole.search_item("item020", k))
    queries = torch.from_numpy(np.asarray(whole.embeddings[[3, 17, 29]])) + 0.1 * torch.randn(3, whole.metadata["dim"])
    assert [_hits(h) for h in sharded.search_embeddings(queries, 8)] == [_hits(h) for h in whole.search_embeddings(queries, 8)]
    tie = sharded.search_item("item003", 2)
    assert [h.id for h in tie] == ["item003", "item020"] and tie[0].score == tie[1].score
    with pytest.raises(ValueError, match="more than the 30 items"):
        sharded.search("ein hund", 31)


def test_search_cli_on_a_sharded_index(world, capsys):
    capsys.readouterr()
    answers = []
    for folder in ("whole", "sharded"):
        assert search_main([str(world / folder), "ein roter hund", "--top", "6", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["hits"])
    assert answers[0] == answers[1] and len(answers[0]) == 6
    assert search_main([str(world / "sharded"), "--like", "nothing"]) == 2
    assert "has no item 'nothing'" in capsys.readouterr().err


def test_shards_of_another_model_or_broken_are_refused(world, tmp_path, capsys):
    _checkpoint(tmp_path / "other_model", 5)
    _index(tmp_path / "other_model", world / "store2", tmp_path / "other")
    parts = [str(world / "part0"), str(tmp_path / "other")]
    assert shards_main([str(tmp_path / "mixed"), *parts]) == 2
    error = capsys.readouterr().err
    assert f"shard {tmp_path / 'other'}: model" in error and "must be built with one model" in error
    assert not (tmp_path / "mixed").exists()
    # written by hand: refused when loaded, naming the shard
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand" / "metadata.json").write_text(json.dumps({"format": "cl2cm-sharded-index/1", "shards": parts}))
    with pytest.raises(ShardMismatchError, match="other: model"):
        SearchIndex.load(tmp_path / "hand")
    (tmp_path / "hand" / "metadata.json").write_text(json.dumps({"format": "cl2cm-sharded-index/1",
                                                                 "shards": [parts[0], str(tmp_path / "missing")]}))
    with pytest.raises(BrokenIndexError, match="missing: no such index folder"):
        SearchIndex.load(tmp_path / "hand")
    with pytest.raises(ValueError, match="not empty and not a sharded index"):
        write_sharded(world / "part1", parts[:1])  # never writes into an index folder


def test_merge_keeps_the_best_and_breaks_ties_by_shard():
    from cl2cm_hf.search import SearchHit

    a = [SearchHit("a1", None, 0.9, rank=1), SearchHit("a2", None, 0.5, rank=2)]
    b = [SearchHit("b1", None, 0.9, rank=1), SearchHit("b2", None, 0.7, rank=2)]
    assert [(h.id, h.rank) for h in merge_hits([a, b], 3)] == [("a1", 1), ("b1", 2), ("b2", 3)]
