"""Build the two networks of a run from its settings: pretrained towers or small towers from
scratch (a vision backbone from `vision_config`, with the image processor that feeds it), stage-2
text tower from stage 1, frozen lower text layers (served from the run's
`FrozenLayerStore` under `cache_frozen_text_layers`), and the frozen stage-1 teacher."""

import copy

import torch
import transformers
from transformers import AutoConfig, AutoModel, BertConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

from .arguments import ModelArguments
from .frozen_layers import FrozenLayerStore, cache_frozen_layers, plain_backbone


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
    p = args.text_dropout
    dropout = {} if p is None else {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_hidden_size,
        num_hidden_layers=args.text_num_layers,
        num_attention_heads=args.text_num_heads,
        intermediate_size=4 * args.text_hidden_size,
        max_position_embeddings=max(64, max_length + 2),
        pad_token_id=tokenizer.pad_token_id,
        **dropout,
    ).to_dict()


def scratch_vision_backbone(vision_config: dict) -> torch.nn.Module:
    """A randomly initialised vision backbone from `vision_config` (model_type plus sizes), for
    backbone mode where no pretrained weights exist (e.g. the demo world's pictures)."""
    settings = dict(vision_config)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    if getattr(config, "hidden_size", None) is None and getattr(config, "hidden_sizes", None):
        # CL2CM reads the backbone's output width as hidden_size; convolutional configs (ConvNeXt,
        # ResNet) list their stage widths as hidden_sizes and pool the last one. Saved with the config.
        config.hidden_size = config.hidden_sizes[-1]
    return AutoModel.from_config(config)


def scratch_image_processor(vision_config: dict):
    """The image processor of `vision_config`'s model type (its Pil class: no torchvision), resizing
    to ``vision_config["image_size"]`` without cropping and normalising as that class does."""
    model_type, side = vision_config["model_type"], vision_config.get("image_size")
    name = (IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}).get("pil")
    if name is None:
        raise ValueError(f"vision_config.model_type={model_type!r}: transformers has no Pil image processor for it")
    if not isinstance(side, int) or isinstance(side, bool) or side < 1:
        raise ValueError(f"vision_config.image_size={side!r}: expected the input side in pixels (a positive integer)")
    processor_class = getattr(transformers, name)
    if "height" in processor_class.size:
        return processor_class(size={"height": side, "width": side})
    # Shortest-edge processors (ConvNeXt, ResNet) crop a centre of crop_pct unless it is 1.
    return processor_class(size={"shortest_edge": side}, crop_pct=1.0)


def set_text_dropout(backbone, p: float | None) -> None:
    """Every dropout of a (pretrained) text backbone to `p`, in its modules and its config; None: unchanged."""
    if p is None:
        return
    for module in backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if isinstance(getattr(backbone.config, key, None), float):
            setattr(backbone.config, key, p)


def _store(args: ModelArguments, frozen_layers: FrozenLayerStore | None) -> FrozenLayerStore | None:
    if args.cache_frozen_text_layers and frozen_layers is None:
        raise ValueError("cache_frozen_text_layers: pass the run's FrozenLayerStore (frozen_layers=...)")
    return frozen_layers if args.cache_frozen_text_layers else None


def build_cross_lingual(
    args: ModelArguments, tokenizer, max_length: int, frozen_layers: FrozenLayerStore | None = None
) -> CL2CMCrossLingualModel:
    """The stage-1 network; with `cache_frozen_text_layers` its towers' frozen layers are served from
    `frozen_layers`."""
    store = _store(args, frozen_layers)
    kwargs = {**_head_kwargs(args), "share_encoders": args.share_encoders}
    if args.text_model:
        model = CL2CMCrossLingualModel.from_towers_pretrained(args.text_model, **kwargs)
    else:
        config = CL2CMCrossLingualConfig(text_config=scratch_text_config(args, tokenizer, max_length), **kwargs)
        model = CL2CMCrossLingualModel(config)
    frozen = args.freeze_text_layers if args.cl_freeze_text_layers is None else args.cl_freeze_text_layers
    for tower in (model.text_model, model.target_text_model):
        if tower is not None:
            set_text_dropout(tower.backbone, args.text_dropout)
            freeze_lower_layers(tower.backbone, frozen)
            if store is not None:
                cache_frozen_layers(tower, frozen, store)
    return model


def build_cross_modal(
    args: ModelArguments,
    tokenizer,
    max_length: int,
    visual_feature_dim: int | None,
    cross_lingual=None,
    frozen_layers: FrozenLayerStore | None = None,
) -> CL2CMCrossModalModel:
    """The stage-2 network; with `cross_lingual` and `init_text_from_cross_lingual` its text tower
    (backbone and projection) starts as a copy of the stage-1 source tower (`cross_lingual` itself
    is left as it is). With `cache_frozen_text_layers` the frozen layers are served from `frozen_layers`.
    `visual_feature_dim`: None for pixels (backbone mode)."""
    store = _store(args, frozen_layers)
    kwargs = {
        **_head_kwargs(args),
        **({} if visual_feature_dim is None else {"visual_feature_dim": visual_feature_dim}),
        "visual_hidden_size": args.visual_hidden_size,
        "visual_num_layers": args.visual_num_layers,
        "visual_num_heads": args.visual_num_heads,
        "visual_max_frames": args.visual_max_frames,
        "visual_dropout": args.visual_dropout,
    }
    if args.visual_encoder_type == "backbone" and not (args.vision_model or args.vision_config):
        raise ValueError("visual_encoder_type: backbone needs vision_model (a folder or hub id) or vision_config")
    vision = scratch_vision_backbone(args.vision_config) if args.vision_config else args.vision_model
    from_stage1 = cross_lingual is not None and args.init_text_from_cross_lingual
    # A copy: the stage-1 network stays the teacher.
    text = copy.deepcopy(plain_backbone(cross_lingual.text_model.backbone)).requires_grad_(True) if from_stage1 else args.text_model
    if text is not None:
        model = CL2CMCrossModalModel.from_towers_pretrained(text, vision, **kwargs)
    elif vision is not None:
        raise ValueError("a vision backbone needs a pretrained text tower (text_model) or a stage-1 model")
    else:
        config = CL2CMCrossModalConfig(text_config=scratch_text_config(args, tokenizer, max_length), **kwargs)
        model = CL2CMCrossModalModel(config)
    if from_stage1:
        model.text_model.projection.load_state_dict(cross_lingual.text_model.projection.state_dict())
    set_text_dropout(model.text_model.backbone, args.text_dropout)
    freeze_lower_layers(model.text_model.backbone, args.freeze_text_layers)
    if store is not None:
        depth = args.freeze_text_layers if args.freeze_text_layers >= 0 else len(model.text_model.backbone.encoder.layer)
        stage1_depth = args.cl_freeze_text_layers or 0
        # Stage 1 (of this run or another sharing the store) freezes fewer layers: keep that depth too.
        keep = [stage1_depth] if 0 < stage1_depth < depth else []
        cache_frozen_layers(model.text_model, args.freeze_text_layers, store, keep_depths=keep)
    return model


def prepare_teacher(cross_lingual, args: ModelArguments, frozen_layers: FrozenLayerStore | None = None):
    """Make the stage-1 network the frozen teacher of stage 2, in place: no gradients, eval mode and,
    with `cache_frozen_text_layers`, all its text layers served from `frozen_layers` (its embeddings
    then cost one pass per distinct text). Returns it."""
    store = _store(args, frozen_layers)
    cross_lingual.requires_grad_(False).eval()
    if store is not None:
        for tower in (cross_lingual.text_model, cross_lingual.target_text_model):
            if tower is not None:
                cache_frozen_layers(tower, -1, store)
    return cross_lingual


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
