"""The real Multi30K files and the offline benchmark under ../shared/data (skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest

from cl2cm_hf.data import kfold_visual_ids, load_multi30k, load_multi30k_r50, multi30k_queries, multi30k_r50_fold

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
pytestmark = pytest.mark.skipif(not (DATA / "multi30k").is_dir(), reason="../shared is absent (no offline Multi30K copy)")


@pytest.fixture(scope="module")
def r50():
    return load_multi30k_r50(SHARED)


def test_real_multi30k_val_split():
    task1 = load_multi30k(DATA / "multi30k", "val", ("en", "de", "fr", "cs"))
    assert {lang: len(ds) for lang, ds in task1.items()} == {"en": 1014, "de": 1014, "fr": 1014, "cs": 1014}
    assert task1["en"][0]["visual_id"] == task1["de"][0]["visual_id"].strip() and task1["de"][0]["lang"] == "de"
    task2 = multi30k_queries(DATA / "multi30k", "val", "de", task=2)
    assert len(task2) == 5 * 1014 and task2["visual_id"][:5] == [task1["en"][0]["visual_id"]] * 5


def test_offline_benchmark_contents(r50):
    features, ids = r50["features"], r50["visual_ids"]
    assert len(features) == 1000 and features.feature_dim == 2048 and not features.is_video
    assert ids[0] == "1007129816.jpg"
    values, mask = features.lookup(ids[:4])
    assert mask is None and values.shape == (4, 2048) and bool(np.isfinite(values.numpy()).all())
    pairs, queries = r50["pairs"], r50["queries"]
    assert len(pairs) == 2 * 5 * 1000 and set(pairs["target_lang"]) == {"de", "fr"}
    nllb = (DATA / "nllb-flickr30k-200" / "deu_Latn.txt").read_text(encoding="utf-8").splitlines()
    english_1 = (DATA / "nllb-flickr30k-200" / "eng_captions.txt").read_text(encoding="utf-8").splitlines()
    first = pairs[0]
    assert first["caption_id"] == "1007129816.jpg#1" and first["target_text"] == nllb[0] and first["source_text"] == english_1[0]
    assert pairs[4]["target_text"] == nllb[0] and pairs[4]["source_text"] != english_1[0]  # captions 2-5 share the MT line
    counts = {lang: queries["lang"][:].count(lang) for lang in ("en", "de", "fr")}
    assert counts == {"en": 5000, "de": 1000, "fr": 1000}
    assert len(load_multi30k_r50(DATA, langs=("fr",), first_caption_only=True)["pairs"]) == 1000


def test_offline_benchmark_folds(r50):
    folds = kfold_visual_ids(r50["visual_ids"], 5, seed=0)
    tests = [set(test) for _, test in folds]
    assert all(len(t) == 200 for t in tests) and set().union(*tests) == set(r50["visual_ids"])
    fold = multi30k_r50_fold(r50, 2, val_items=100)
    ids = {split: set(ds["visual_id"]) for split, ds in fold.pairs.items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 700, "validation": 100, "test": 200}
    assert ids["test"] == tests[2] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    assert set(fold.queries) == {"validation", "test"} and len(fold.queries["test"]) == 200 * 7
    assert len(multi30k_r50_fold(r50, 0).pairs["train"]) == 800 * 10


def test_offline_benchmark_rejects_unknown_language():
    with pytest.raises(ValueError, match=r"no NLLB translations for \['xx'\]"):
        load_multi30k_r50(SHARED, langs=("xx",))
    with pytest.raises(ValueError, match="no human cs translation"):
        load_multi30k_r50(SHARED, langs=("cs",))
