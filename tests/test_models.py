"""The two dual encoders on tiny random towers: shapes, normalisation, masks, losses, init,
pretrained towers, save/load in-process, and clear errors on bad input or bad configs."""

import json

import pytest
import torch
from conftest import (
    FEATURE_DIM,
    IMAGE_SIZE,
    PROJECTION_DIM,
    backbone_config,
    cross_lingual_config,
    features_config,
    frame_mask,
    text_batch,
    tiny_bert_config,
    tiny_clip_vision_config,
)
from transformers import AutoConfig, AutoModel, BertModel, CLIPVisionModel

from cl2cm_hf import (
    CL2CMCrossLingualConfig,
    CL2CMCrossLingualModel,
    CL2CMCrossLingualOutput,
    CL2CMCrossModalConfig,
    CL2CMCrossModalModel,
    CL2CMCrossModalOutput,
    info_nce,
)


def assert_unit_rows(x, rows, dim=PROJECTION_DIM):
    assert tuple(x.shape) == (rows, dim)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(rows), atol=1e-5, rtol=0)


def build(config_fn, seed=0, **kwargs):
    torch.manual_seed(seed)
    cls = CL2CMCrossLingualModel if config_fn is cross_lingual_config else CL2CMCrossModalModel
    return cls(config_fn(**kwargs)).eval()


# ---------------------------------------------------------------------------------------------
# The snippet of the issue, verbatim apart from the inputs it leaves open
# ---------------------------------------------------------------------------------------------


def test_issue_snippet_runs():
    from transformers import BertConfig

    from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel

    B, T = 3, 4
    ids = torch.randint(0, 1000, (B, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    m = frame_mask([4, 2, 1], T)

    text = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    cfg = CL2CMCrossModalConfig(text_config=text.to_dict(), visual_encoder_type="features", visual_feature_dim=48, projection_dim=16)
    model = CL2CMCrossModalModel(cfg)
    assert_unit_rows(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, B, 16)
    assert_unit_rows(model.get_image_features(visual_features=torch.randn(B, 48)).pooler_output, B, 16)
    assert_unit_rows(model.get_video_features(visual_features=torch.randn(B, T, 48), visual_mask=m).pooler_output, B, 16)


# ---------------------------------------------------------------------------------------------
# Cross-modal model, features mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [0, 1])
def test_features_mode_images_and_videos(num_layers):
    model = build(features_config, visual_num_layers=num_layers)
    images = torch.randn(4, FEATURE_DIM)
    assert_unit_rows(model.get_image_features(visual_features=images).pooler_output, 4)

    video = torch.randn(4, 5, FEATURE_DIM)
    mask = frame_mask([5, 3, 1, 2], 5)
    with torch.no_grad():
        emb = model.get_video_features(visual_features=video, visual_mask=mask).pooler_output
        assert_unit_rows(emb, 4)
        # Padding frames do not matter: overwrite them with garbage.
        noisy = video.clone()
        noisy[~mask.bool()] = 1e3 * torch.randn(int((mask == 0).sum()), FEATURE_DIM)
        torch.testing.assert_close(model.get_video_features(visual_features=noisy, visual_mask=mask).pooler_output, emb)
        # An image is a one-frame video; no mask means every frame counts.
        torch.testing.assert_close(
            model.get_image_features(visual_features=images).pooler_output,
            model.get_video_features(visual_features=images[:, None]).pooler_output,
        )
        torch.testing.assert_close(
            model.get_video_features(visual_features=video).pooler_output,
            model.get_video_features(visual_features=video, visual_mask=torch.ones(4, 5, dtype=torch.long)).pooler_output,
        )
        if num_layers == 0:  # masked mean: a video of identical frames equals the single frame
            same = images[:, None].expand(4, 3, FEATURE_DIM)
            torch.testing.assert_close(
                model.get_video_features(visual_features=same).pooler_output, model.get_image_features(visual_features=images).pooler_output
            )


def test_features_mode_zero_length_video_is_finite():
    model = build(features_config, visual_num_layers=1)
    with torch.no_grad():
        out = model.visual_model(torch.randn(2, 3, FEATURE_DIM), frame_mask([0, 2], 3))[1]
    assert torch.isfinite(out).all()


def test_text_features_shapes_and_padding_invariance():
    model = build(features_config)
    ids, mask = text_batch(3, 8)
    with torch.no_grad():
        emb = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        assert_unit_rows(emb, 3)
        other = ids.clone()
        other[mask == 0] = 7  # different ids under the padding
        torch.testing.assert_close(model.get_text_features(input_ids=other, attention_mask=mask).pooler_output, emb)


@pytest.mark.parametrize("mode", ["features", "backbone"])
def test_forward_returns_loss_logits_and_scale(mode):
    if mode == "features":
        model = build(features_config, visual_num_layers=1)
        visual = {"visual_features": torch.randn(3, 4, FEATURE_DIM), "visual_mask": frame_mask([4, 2, 1], 4)}
    else:
        model = build(backbone_config, visual_num_layers=1)
        visual = {"pixel_values": torch.randn(3, 2, 3, IMAGE_SIZE, IMAGE_SIZE), "visual_mask": frame_mask([2, 1, 2], 2)}
    ids, mask = text_batch(3, 6)
    target_ids, target_mask = text_batch(3, 5, seed=1)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        target_input_ids=target_ids,
        target_attention_mask=target_mask,
        return_loss=True,
        **visual,
    )
    assert isinstance(out, CL2CMCrossModalOutput)
    assert_unit_rows(out.text_embeds, 3)
    assert_unit_rows(out.visual_embeds, 3)
    assert_unit_rows(out.target_text_embeds, 3)
    assert out.scale.requires_grad
    assert out.scale.item() == pytest.approx(torch.tensor(2.6592).exp().item(), rel=1e-5)
    torch.testing.assert_close(out.logits_per_text, out.scale * out.text_embeds @ out.visual_embeds.t())
    torch.testing.assert_close(out.logits_per_visual, out.logits_per_text.t())
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, info_nce(out.text_embeds, out.visual_embeds, 1.0 / out.scale))
    with torch.no_grad():
        torch.testing.assert_close(out.text_embeds, model.get_text_features(ids, mask).pooler_output)
        torch.testing.assert_close(out.target_text_embeds, model.get_text_features(target_ids, target_mask).pooler_output)
    out.loss.backward()
    assert model.logit_scale.grad is not None and torch.isfinite(model.logit_scale.grad)
    assert model.visual_model.projection.weight.grad.abs().sum() > 0
    assert model.text_model.projection.weight.grad.abs().sum() > 0

    no_loss = model(input_ids=ids, attention_mask=mask, **visual)
    assert no_loss.loss is None and no_loss.scale is not None


def test_logit_scale_is_clamped_at_100():
    model = build(features_config, logit_scale_init_value=10.0)
    assert model.scale().item() == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Cross-modal model, backbone mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [0, 1])
def test_backbone_mode_images_and_videos(num_layers):
    model = build(backbone_config, visual_num_layers=num_layers)
    assert isinstance(model.visual_model.backbone, CLIPVisionModel)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    video = torch.randn(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE)
    mask = frame_mask([3, 1], 3)
    with torch.no_grad():
        assert_unit_rows(model.get_image_features(pixel_values=images).pooler_output, 2)
        emb = model.get_video_features(pixel_values=video, visual_mask=mask).pooler_output
        assert_unit_rows(emb, 2)
        noisy = video.clone()
        noisy[1, 1:] = 50 * torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(model.get_video_features(pixel_values=noisy, visual_mask=mask).pooler_output, emb)
        torch.testing.assert_close(
            model.get_image_features(pixel_values=images).pooler_output,
            model.get_video_features(pixel_values=images[:, None]).pooler_output,
        )


def test_visual_input_kind_must_match_mode():
    features = build(features_config)
    backbone = build(backbone_config)
    with pytest.raises(ValueError, match="visual_features"):
        features.get_image_features(pixel_values=torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)).pooler_output
    with pytest.raises(ValueError, match="pixel_values"):
        backbone.get_image_features(visual_features=torch.randn(1, FEATURE_DIM)).pooler_output
    with pytest.raises(ValueError, match="pixel_values must be"):
        backbone.get_image_features(pixel_values=torch.randn(3, IMAGE_SIZE, IMAGE_SIZE)).pooler_output


# ---------------------------------------------------------------------------------------------
# Cross-lingual model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [True, False])
def test_cross_lingual_sentence_and_token_outputs(share):
    model = build(cross_lingual_config, share_encoders=share)
    assert (model.target_text_model is None) == share
    src, src_mask = text_batch(3, 7)
    tgt, tgt_mask = text_batch(3, 9, seed=1)
    out = model(
        source_input_ids=src,
        target_input_ids=tgt,
        source_attention_mask=src_mask,
        target_attention_mask=tgt_mask,
        return_loss=True,
    )
    assert isinstance(out, CL2CMCrossLingualOutput)
    assert_unit_rows(out.source_embeds, 3)
    assert_unit_rows(out.target_embeds, 3)
    assert tuple(out.source_token_embeds.shape) == (3, 7, PROJECTION_DIM)
    assert tuple(out.target_token_embeds.shape) == (3, 9, PROJECTION_DIM)
    assert torch.equal(out.source_token_mask, src_mask) and torch.equal(out.target_token_mask, tgt_mask)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    torch.testing.assert_close(out.loss, info_nce(out.source_embeds, out.target_embeds, 1.0 / out.scale))
    out.loss.backward()
    assert model.logit_scale.grad is not None

    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(src, src_mask, language="source").pooler_output, out.source_embeds)
        torch.testing.assert_close(model.get_text_features(tgt, tgt_mask, language="target").pooler_output, out.target_embeds)
        tokens, mask = model.get_token_features(tgt, tgt_mask, language="target")
        torch.testing.assert_close(tokens, out.target_token_embeds)
        # The sentence embedding is the normalised masked mean of the token embeddings (mean pooling,
        # bias-free projection).
        mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(torch.nn.functional.normalize(mean, dim=-1), out.target_embeds)
        same_src = model.get_text_features(src, src_mask, language="source").pooler_output
        same_tgt = model.get_text_features(src, src_mask, language="target").pooler_output
        if share:
            torch.testing.assert_close(same_src, same_tgt)
        else:
            assert not torch.allclose(same_src, same_tgt)
    with pytest.raises(ValueError, match="language"):
        model.get_text_features(src, src_mask, language="german").pooler_output


def test_cross_lingual_cls_pooling():
    model = build(cross_lingual_config, pooling="cls")
    ids, mask = text_batch(2, 6)
    with torch.no_grad():
        tokens, _ = model.get_token_features(ids, mask)
        torch.testing.assert_close(
            model.get_text_features(ids, mask).pooler_output, torch.nn.functional.normalize(tokens[:, 0], dim=-1)
        )


@pytest.mark.parametrize("share", [True, False])
def test_cross_lingual_save_load(tmp_path, share):
    model = build(cross_lingual_config, share_encoders=share)
    model.save_pretrained(tmp_path)  # share=False must not trip the shared-tensor check
    assert (tmp_path / "model.safetensors").is_file()
    loaded, info = CL2CMCrossLingualModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.share_encoders is share
    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is CL2CMCrossLingualModel
    src, src_mask = text_batch(3, 7)
    with torch.no_grad():
        for lang in ("source", "target"):
            want = model.get_text_features(src, src_mask, language=lang).pooler_output
            torch.testing.assert_close(loaded.get_text_features(src, src_mask, language=lang).pooler_output, want, atol=0, rtol=0)
            torch.testing.assert_close(auto.get_text_features(src, src_mask, language=lang).pooler_output, want, atol=0, rtol=0)


@pytest.mark.parametrize("config_fn", [features_config, backbone_config])
def test_cross_modal_save_load(tmp_path, config_fn):
    model = build(config_fn, visual_num_layers=1, logit_scale_init_value=1.5)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is CL2CMCrossModalModel
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.visual_encoder_type == model.config.visual_encoder_type
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids, mask = text_batch(2, 5)
    if config_fn is features_config:
        visual = {"visual_features": torch.randn(2, 3, FEATURE_DIM), "visual_mask": frame_mask([3, 2], 3)}
    else:
        visual = {"pixel_values": torch.randn(2, 2, 3, IMAGE_SIZE, IMAGE_SIZE), "visual_mask": frame_mask([2, 1], 2)}
    with torch.no_grad():
        a, b = model(input_ids=ids, attention_mask=mask, **visual), loaded(input_ids=ids, attention_mask=mask, **visual)
    for field in ("text_embeds", "visual_embeds", "scale"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Weight init
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_fn", [cross_lingual_config, features_config, backbone_config])
def test_init_is_deterministic_under_seed(config_fn):
    kwargs = {} if config_fn is cross_lingual_config else {"visual_num_layers": 1}
    first, second = build(config_fn, seed=0, **kwargs), build(config_fn, seed=0, **kwargs)
    other = build(config_fn, seed=1, **kwargs)
    sd1, sd2, sd3 = first.state_dict(), second.state_dict(), other.state_dict()
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1)


@pytest.mark.parametrize("config_fn", [cross_lingual_config, features_config, backbone_config])
def test_init_values(config_fn):
    model = build(config_fn, logit_scale_init_value=1.234)
    assert model.logit_scale.item() == pytest.approx(1.234, abs=1e-6)
    assert model.logit_scale.requires_grad
    std = model.config.initializer_range
    head = model.text_model.projection.weight
    assert head.abs().max() < 10 * std and head.std().item() == pytest.approx(std, rel=0.5)
    if config_fn is features_config:
        norm = model.visual_model.input_proj[1]
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert torch.equal(model.visual_model.input_proj[0].bias, torch.zeros_like(model.visual_model.input_proj[0].bias))


@pytest.mark.parametrize("config_fn", [cross_lingual_config, features_config])
def test_fixed_logit_scale(tmp_path, config_fn):
    model = build(config_fn, learnable_logit_scale=False, logit_scale_init_value=2.0)
    assert not model.logit_scale.requires_grad
    assert model.logit_scale.item() == pytest.approx(2.0)
    assert all(p is not model.logit_scale for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # the stored value is what loads, not the config's init value
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    # from_pretrained re-creates loaded parameters with requires_grad=True: the scale must stay fixed.
    assert not loaded.logit_scale.requires_grad
    assert all(p is not loaded.logit_scale for p in loaded.parameters() if p.requires_grad)
    assert loaded.logit_scale.item() == pytest.approx(2.5)
    assert "logit_scale" in loaded.state_dict()
    out = loaded(**_inputs_for(loaded), return_loss=True)
    assert not out.scale.requires_grad
    out.loss.backward()  # trains the rest, leaves the scale alone
    assert loaded.logit_scale.grad is None and loaded.logit_scale.item() == pytest.approx(2.5)


def _inputs_for(model):
    ids, mask = text_batch(2, 5)
    if isinstance(model, CL2CMCrossLingualModel):
        return {"source_input_ids": ids, "source_attention_mask": mask, "target_input_ids": ids.flip(0)}
    return {"input_ids": ids, "attention_mask": mask, "visual_features": torch.randn(2, FEATURE_DIM)}


# ---------------------------------------------------------------------------------------------
# Pretrained towers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved_bert(tmp_path):
    torch.manual_seed(123)
    bert = BertModel(tiny_bert_config())
    # Move away from any init a fresh build could reproduce by chance.
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(0.5)
    path = tmp_path / "tiny-bert"
    bert.save_pretrained(path)
    return path, {k: v.clone() for k, v in bert.state_dict().items() if not k.startswith("pooler.")}


@pytest.fixture
def saved_clip_vision(tmp_path):
    torch.manual_seed(321)
    clip = CLIPVisionModel(tiny_clip_vision_config())
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.25)
    path = tmp_path / "tiny-clip-vision"
    clip.save_pretrained(path)
    return path, {k: v.clone() for k, v in clip.state_dict().items()}


def assert_state_equal(module, expected):
    got = module.state_dict()
    for key, value in expected.items():
        assert key in got, key
        assert torch.equal(got[key], value), key


def test_from_towers_pretrained_text_only(saved_bert):
    path, bert_sd = saved_bert
    model = CL2CMCrossModalModel.from_towers_pretrained(
        text=str(path), visual_feature_dim=FEATURE_DIM, visual_hidden_size=32, projection_dim=PROJECTION_DIM
    )
    assert model.config.visual_encoder_type == "features"
    assert model.config.text_config.hidden_size == 32
    assert_state_equal(model.text_model.backbone, bert_sd)
    assert torch.isfinite(model.text_model.projection.weight).all()
    assert model.text_model.projection.weight.abs().max() < 0.2  # a fresh head, not the +0.5 shift
    ids, mask = text_batch(2, 5)
    assert_unit_rows(model.eval().get_text_features(ids, mask).pooler_output, 2)

    cl = CL2CMCrossLingualModel.from_towers_pretrained(text=str(path), share_encoders=False, projection_dim=8)
    assert_state_equal(cl.text_model.backbone, bert_sd)
    assert_state_equal(cl.target_text_model.backbone, bert_sd)
    cl_shared = CL2CMCrossLingualModel.from_towers_pretrained(text=str(path), projection_dim=8)
    assert_state_equal(cl_shared.text_model.backbone, bert_sd)


def test_from_towers_pretrained_with_module_backbones(saved_bert):
    """Towers passed as modules (a BertModel with its pooler) are used as they are."""
    path, bert_sd = saved_bert
    bert = BertModel.from_pretrained(path)  # add_pooling_layer=True: has weights the towers lack
    cl = CL2CMCrossLingualModel.from_towers_pretrained(text=bert, share_encoders=False, projection_dim=8)
    assert cl.text_model.backbone is bert
    assert_state_equal(cl.target_text_model.backbone, bert_sd)
    assert cl.target_text_model.backbone is not bert
    cm = CL2CMCrossModalModel.from_towers_pretrained(
        text=bert, visual_feature_dim=FEATURE_DIM, visual_hidden_size=32, projection_dim=8
    )
    assert_state_equal(cm.text_model.backbone, bert_sd)


def test_from_towers_pretrained_vision_half_of_a_full_clip_checkpoint(saved_bert, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    path, bert_sd = saved_bert
    text_cfg = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(5)
    clip = CLIPModel(
        CLIPConfig(text_config=text_cfg.to_dict(), vision_config=tiny_clip_vision_config().to_dict(), projection_dim=16)
    )
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.3)
    clip.save_pretrained(tmp_path / "tiny-clip")
    model = CL2CMCrossModalModel.from_towers_pretrained(
        text=str(path), vision=str(tmp_path / "tiny-clip"), projection_dim=8, visual_num_heads=2
    )
    assert isinstance(model.visual_model.backbone, CLIPVisionModel)
    vision_sd = {k: v for k, v in clip.vision_model.state_dict().items()}
    assert_state_equal(model.visual_model.backbone, vision_sd)
    assert_state_equal(model.text_model.backbone, bert_sd)


def test_from_towers_pretrained_text_and_vision(saved_bert, saved_clip_vision, tmp_path):
    text_path, bert_sd = saved_bert
    vision_path, clip_sd = saved_clip_vision
    model = CL2CMCrossModalModel.from_towers_pretrained(
        text=str(text_path), vision=str(vision_path), projection_dim=PROJECTION_DIM, visual_num_heads=2
    )
    assert model.config.visual_encoder_type == "backbone"
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert_state_equal(model.text_model.backbone, bert_sd)
    assert_state_equal(model.visual_model.backbone, clip_sd)
    assert_unit_rows(model.eval().get_image_features(pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).pooler_output, 2)

    # The composed model saves and reloads with the backbone weights intact.
    model.save_pretrained(tmp_path / "composed")
    reloaded = AutoModel.from_pretrained(tmp_path / "composed")
    assert_state_equal(reloaded.visual_model.backbone, clip_sd)
    assert_state_equal(reloaded.text_model.backbone, bert_sd)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem
# ---------------------------------------------------------------------------------------------


def test_bad_visual_feature_dim():
    model = build(features_config)
    with pytest.raises(ValueError, match="visual_feature_dim=48"):
        model.get_image_features(visual_features=torch.randn(2, FEATURE_DIM + 1)).pooler_output
    with pytest.raises(ValueError, match="visual_feature_dim=48"):
        model.get_video_features(visual_features=torch.randn(2, 3, 10)).pooler_output
    with pytest.raises(ValueError, match="visual_features must be"):
        model.get_image_features(visual_features=torch.randn(2, 3, 4, FEATURE_DIM)).pooler_output


def test_batch_size_mismatch_in_forward():
    model = build(features_config)
    ids, mask = text_batch(3, 5)
    with pytest.raises(ValueError, match="text and visual batch sizes differ: 3 vs 2"):
        model(input_ids=ids, attention_mask=mask, visual_features=torch.randn(2, FEATURE_DIM))
    with pytest.raises(ValueError, match="target_input_ids batch sizes differ"):
        model(input_ids=ids, visual_features=torch.randn(3, FEATURE_DIM), target_input_ids=ids[:2])
    backbone = build(backbone_config)
    with pytest.raises(ValueError, match="batch sizes differ"):
        backbone(input_ids=ids, pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    cl = build(cross_lingual_config)
    with pytest.raises(ValueError, match="source and target batch sizes differ"):
        cl(source_input_ids=ids, target_input_ids=ids[:1])


def test_mask_shape_mismatch():
    model = build(features_config)
    ids, mask = text_batch(3, 5)
    with pytest.raises(ValueError, match="visual_mask"):
        model.get_video_features(visual_features=torch.randn(3, 4, FEATURE_DIM), visual_mask=torch.ones(3, 5)).pooler_output
    with pytest.raises(ValueError, match="visual_mask"):
        model.get_video_features(visual_features=torch.randn(3, 4, FEATURE_DIM), visual_mask=torch.ones(2, 4)).pooler_output
    with pytest.raises(ValueError, match=r"get_video_features takes visual_features \(B, T, D\), got shape \(3, 48\)"):
        model.get_video_features(visual_features=torch.randn(3, FEATURE_DIM), visual_mask=torch.ones(3, 4)).pooler_output
    with pytest.raises(ValueError, match=r"\(B, T, D\) goes to get_video_features"):
        model.get_image_features(visual_features=torch.randn(3, 4, FEATURE_DIM)).pooler_output
    with pytest.raises(ValueError, match="attention_mask"):
        model.get_text_features(input_ids=ids, attention_mask=mask[:, :4]).pooler_output
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=ids, attention_mask=mask[:2], visual_features=torch.randn(3, FEATURE_DIM))
    backbone = build(backbone_config)
    with pytest.raises(ValueError, match="visual_mask"):
        backbone.get_video_features(
            pixel_values=torch.randn(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE), visual_mask=torch.ones(2, 2)
        ).pooler_output
    cl = build(cross_lingual_config)
    with pytest.raises(ValueError, match="attention_mask"):
        cl(source_input_ids=ids, target_input_ids=ids, target_attention_mask=mask[:, :3])


def test_too_many_frames_for_temporal_layers():
    model = build(features_config, visual_num_layers=1)  # visual_max_frames=8
    with pytest.raises(ValueError, match="visual_max_frames=8"):
        model.get_video_features(visual_features=torch.randn(1, 9, FEATURE_DIM)).pooler_output


@pytest.mark.parametrize(
    "config_fn, kwargs, match",
    [
        (features_config, {"pooling": "max"}, "pooling='max'"),
        (cross_lingual_config, {"pooling": "attention"}, "pooling='attention'"),
        (features_config, {"visual_encoder_type": "bogus"}, "visual_encoder_type='bogus'"),
        (features_config, {"projection_dim": -5}, "projection_dim=-5"),
        (cross_lingual_config, {"projection_dim": 0}, "projection_dim=0"),
        (features_config, {"visual_hidden_size": -1}, "visual_hidden_size=-1"),
        (features_config, {"visual_num_layers": -1}, "visual_num_layers=-1"),
        (features_config, {"visual_num_heads": 0}, "visual_num_heads=0"),
        (features_config, {"visual_max_frames": -3}, "visual_max_frames=-3"),
        (features_config, {"visual_dropout": 1.5}, "visual_dropout=1.5"),
        (features_config, {"visual_num_layers": 1, "visual_hidden_size": 30, "visual_num_heads": 4}, "divisible"),
    ],
)
def test_bad_config_values(config_fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_fn(**kwargs)


def test_bad_config_values_without_helpers():
    text = tiny_bert_config().to_dict()
    with pytest.raises(ValueError, match="visual_feature_dim=-48"):
        CL2CMCrossModalConfig(text_config=text, visual_feature_dim=-48)
    with pytest.raises(ValueError, match="needs a vision_config"):
        CL2CMCrossModalConfig(text_config=text, visual_encoder_type="backbone")
    bad_text = dict(text, hidden_size=-32)
    with pytest.raises(ValueError, match="hidden_size"):
        CL2CMCrossLingualConfig(text_config=bad_text)


@pytest.mark.parametrize(
    "config_fn, field, value",
    [
        (features_config, "projection_dim", -5),
        (features_config, "visual_encoder_type", "bogus"),
        (cross_lingual_config, "pooling", "max"),
        (features_config, "visual_feature_dim", 0),
    ],
)
def test_edited_config_json_fails_on_load(tmp_path, config_fn, field, value):
    model = build(config_fn)
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    data = json.loads(config_file.read_text())
    data[field] = value
    config_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        type(model).from_pretrained(tmp_path)


def test_config_round_trip(tmp_path):
    config = backbone_config(visual_num_layers=1, pooling="cls", text_prefix="query: ")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CL2CMCrossModalConfig)
    assert loaded.pooling == "cls" and loaded.text_prefix == "query: " and loaded.visual_num_layers == 1
    assert loaded.vision_config.model_type == "clip_vision_model" and loaded.vision_config.hidden_size == 32
    assert loaded.text_config.model_type == "bert" and loaded.text_config.hidden_size == 32
    assert loaded.to_diff_dict() == config.to_diff_dict()


# ---------------------------------------------------------------------------------------------
# transformers' conventions (issue 18)
# ---------------------------------------------------------------------------------------------


def test_reload_with_another_projection_dim_needs_ignore_mismatched_sizes(tmp_path):
    model = build(features_config)
    model.save_pretrained(tmp_path)
    config = features_config(projection_dim=PROJECTION_DIM * 2)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        CL2CMCrossModalModel.from_pretrained(tmp_path, config=config)
    loaded = CL2CMCrossModalModel.from_pretrained(tmp_path, config=config, ignore_mismatched_sizes=True)
    assert loaded.text_model.projection.weight.shape[0] == PROJECTION_DIM * 2
    assert_state_equal(loaded.text_model.backbone, model.text_model.backbone.state_dict())


def test_output_loading_info_returns_the_problems_instead_of_raising(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build(features_config)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["text_model.projection.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = CL2CMCrossModalModel.from_pretrained(tmp_path, output_loading_info=True)
    assert "text_model.projection.weight" in info["missing_keys"]


def test_return_dict_false_and_output_flags_of_the_config():
    model = build(features_config)
    ids, mask = text_batch()
    features = torch.randn(3, FEATURE_DIM)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, visual_features=features, output_hidden_states=True)
        assert len(out.text_model_output.hidden_states) == 3  # embeddings + 2 layers
        model.config.return_dict = False
        as_tuple = model.get_text_features(input_ids=ids, attention_mask=mask)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], out.text_embeds)


def test_feature_inputs_are_cast_to_the_model_dtype():
    model = build(features_config, visual_num_layers=1).to(torch.bfloat16)
    ids, mask = text_batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, visual_features=torch.randn(3, 2, FEATURE_DIM), visual_mask=frame_mask([2, 1, 2], 2))
    assert out.visual_embeds.dtype == torch.bfloat16 and torch.isfinite(out.logits_per_text.float()).all()


@pytest.mark.parametrize("config_fn, kwargs", [(features_config, {}), (cross_lingual_config, {"share_encoders": False})])
def test_input_embeddings_resize_and_require_grads(config_fn, kwargs):
    model = build(config_fn, **kwargs)
    assert model.get_input_embeddings() is model.text_model.backbone.embeddings.word_embeddings
    model.resize_token_embeddings(1010)
    assert model.get_input_embeddings().weight.shape[0] == 1010
    model.enable_input_require_grads()  # what PEFT calls with gradient checkpointing
    ids, mask = text_batch()
    ids[0, 1] = 1009  # a new token id, on every tower
    with torch.no_grad():
        if config_fn is cross_lingual_config:
            assert model.target_text_model.backbone.get_input_embeddings().weight.shape[0] == 1010
            model(source_input_ids=ids, target_input_ids=ids, source_attention_mask=mask, target_attention_mask=mask)
        else:
            model.get_text_features(input_ids=ids, attention_mask=mask)


def test_cross_lingual_main_input_name_is_forwards_first_argument():
    import inspect

    assert CL2CMCrossLingualModel.main_input_name == list(inspect.signature(CL2CMCrossLingualModel.forward).parameters)[1]


def test_missing_weights_of_a_backbone_get_the_backbones_own_init():
    config = backbone_config()
    model = CL2CMCrossModalModel.from_pretrained(None, config=config, state_dict={})
    attention = model.visual_model.backbone.encoder.layers[0].self_attn
    width, layers = config.vision_config.hidden_size, config.vision_config.num_hidden_layers
    clip_std = width**-0.5 * (2 * layers) ** -0.5  # CLIP's scaled init, not N(0, initializer_range)
    assert abs(attention.q_proj.weight.std().item() - clip_std) < 0.3 * clip_std
