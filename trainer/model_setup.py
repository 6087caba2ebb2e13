"""Build the two networks of a run from its settings: pretrained towers or small towers from
scratch, stage-2 text tower from stage 1, frozen lower text layers."""

import copy

from transformers import BertConfig

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

from .arguments import ModelArguments
from .text_cache import install_frozen_prefix_cache


def _head_kwargs(args: ModelArguments) -> dict:
    return {
        "pooling": args.pooling,
        "projection_dim": args.projection_dim,
        "logit_scale_init_value": args.logit_scale_init_value,
        "learnable_logit_scale": args.learnable_logit_scale,
        "text_prefix": args.text_prefix,
    }


def scratch_text_config(args: ModelArguments, tokenizer, max_length: int) -> dict:
    """A small BERT sized by the run's settings, for demo worlds with their own tokenizer."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_hidden_size,
        num_hidden_layers=args.text_num_layers,
        num_attention_heads=args.text_num_heads,
        intermediate_size=4 * args.text_hidden_size,
        max_position_embeddings=max(64, max_length + 2),
        pad_token_id=tokenizer.pad_token_id,
    ).to_dict()


def build_cross_lingual(args: ModelArguments, tokenizer, max_length: int) -> CL2CMCrossLingualModel:
    kwargs = {**_head_kwargs(args), "share_encoders": args.share_encoders}
    if args.text_model:
        model = CL2CMCrossLingualModel.from_towers_pretrained(args.text_model, **kwargs)
    else:
        config = CL2CMCrossLingualConfig(text_config=scratch_text_config(args, tokenizer, max_length), **kwargs)
        model = CL2CMCrossLingualModel(config)
    for tower in (model.text_model, model.target_text_model):
        if tower is not None:
            freeze_lower_layers(tower.backbone, args.freeze_text_layers)
            if args.cache_frozen_text_layers:
                install_frozen_prefix_cache(tower.backbone, args.freeze_text_layers)
    return model


def build_cross_modal(
    args: ModelArguments, tokenizer, max_length: int, visual_feature_dim: int, cross_lingual=None
) -> CL2CMCrossModalModel:
    """The stage-2 network; with `cross_lingual` and `init_text_from_cross_lingual` its text tower
    (backbone and projection) starts as a copy of the stage-1 source tower."""
    kwargs = {
        **_head_kwargs(args),
        "visual_feature_dim": visual_feature_dim,
        "visual_hidden_size": args.visual_hidden_size,
        "visual_num_layers": args.visual_num_layers,
        "visual_num_heads": args.visual_num_heads,
        "visual_max_frames": args.visual_max_frames,
        "visual_dropout": args.visual_dropout,
    }
    if args.visual_encoder_type == "backbone" and not args.vision_model:
        raise ValueError("visual_encoder_type: backbone needs vision_model (a folder or hub id)")
    from_stage1 = cross_lingual is not None and args.init_text_from_cross_lingual
    # A copy: the stage-1 network stays the frozen teacher.
    text = copy.deepcopy(cross_lingual.text_model.backbone) if from_stage1 else args.text_model
    if text is not None:
        model = CL2CMCrossModalModel.from_towers_pretrained(text, args.vision_model, **kwargs)
    elif args.vision_model:
        raise ValueError("a vision backbone needs a pretrained text tower (text_model) or a stage-1 model")
    else:
        config = CL2CMCrossModalConfig(text_config=scratch_text_config(args, tokenizer, max_length), **kwargs)
        model = CL2CMCrossModalModel(config)
    if from_stage1:
        model.text_model.projection.load_state_dict(cross_lingual.text_model.projection.state_dict())
    freeze_lower_layers(model.text_model.backbone, args.freeze_text_layers)
    if args.cache_frozen_text_layers:
        install_frozen_prefix_cache(model.text_model.backbone, args.freeze_text_layers)
    return model


def freeze_lower_layers(backbone, num_layers: int) -> None:
    """Freeze the embeddings and the lowest `num_layers` transformer layers (-1: the whole backbone)."""
    if num_layers == 0:
        return
    if num_layers < 0:
        backbone.requires_grad_(False)
        return
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"freeze_text_layers: cannot find encoder.layer in {type(backbone).__name__}")
    if num_layers > len(layers):
        raise ValueError(f"freeze_text_layers={num_layers} but the text backbone has {len(layers)} layers")
    backbone.embeddings.requires_grad_(False)
    for layer in layers[:num_layers]:
        layer.requires_grad_(False)
