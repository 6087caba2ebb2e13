# Copyright 2026 The cl2cm-hf authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the two CL2CM dual encoders.

This file is copied into every checkpoint, so it imports only the standard library, torch and
transformers. Values are checked when the config is built, i.e. before any tensor of a model is
allocated, so a broken ``config.json`` fails with a message naming the field.

A saved config (read through `from_dict`, as `from_pretrained` does) must state every field that
decides the architecture: a missing one would silently take its default and the weights would
load with layers dropped or left random. Configs built in code keep their defaults.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .errors import CL2CMError

POOLING_MODES = ("cls", "mean")
VISUAL_ENCODER_TYPES = ("features", "backbone")


def _check_choice(config_name: str, field: str, value, choices) -> None:
    if value not in choices:
        raise CL2CMError(f"{config_name}.{field}={value!r} is not supported; expected one of {list(choices)}")


def _check_positive(config_name: str, field: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise CL2CMError(f"{config_name}.{field}={value!r} is invalid; expected {expected}")


# Sizes of a backbone sub-config that must be positive / non-negative integers where present, and
# probabilities in [0, 1]: checked here because a bad value otherwise fails deep inside module
# construction (a negative tensor dimension, a modulo by zero) or, worse, loads (no layers at all).
_SUB_POSITIVE = (
    "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
    "image_size", "patch_size", "num_channels",
)
_SUB_NON_NEGATIVE = ("num_hidden_layers", "type_vocab_size")
_SUB_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def _check_sub_config_type(config_name: str, field: str, value) -> None:
    if value is not None and not isinstance(value, (dict, PreTrainedConfig)):
        raise CL2CMError(f"{config_name}.{field}={value!r} is invalid; expected a config (a mapping)")


def _check_sub_config(config_name: str, field: str, sub) -> None:
    """Sizes and probabilities of a backbone config (`text_config`, `vision_config`)."""
    if sub is None:
        return
    where = f"{config_name}.{field}"
    for name in _SUB_POSITIVE + _SUB_NON_NEGATIVE:
        value = getattr(sub, name, None)
        if value is not None:
            _check_positive(where, name, value, allow_zero=name in _SUB_NON_NEGATIVE)
    for name in _SUB_PROBABILITIES:
        value = getattr(sub, name, None)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0):
            raise CL2CMError(f"{where}.{name}={value!r} is invalid; expected a probability in [0, 1]")
    hidden, heads = getattr(sub, "hidden_size", None), getattr(sub, "num_attention_heads", None)
    explicit_head_dim = getattr(sub, "head_dim", None) is not None  # then widths need not divide
    if isinstance(hidden, int) and isinstance(heads, int) and not explicit_head_dim and hidden % heads:
        raise CL2CMError(f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")


# Fields of a backbone sub-config that decide its architecture; a saved sub-config must state each
# one its model type has.
_SUB_ARCHITECTURE = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "image_size", "patch_size", "num_channels",
)


def _check_saved_sub_config(config_name: str, field: str, sub) -> None:
    where = f"{config_name}.{field}"
    _check_sub_config_type(config_name, field, sub)
    if sub is None:
        raise CL2CMError(f"{where} is missing from the saved config; expected the backbone's config (a mapping)")
    model_type = sub.get("model_type")
    if not isinstance(model_type, str):
        raise CL2CMError(f"{where}.model_type is missing from the saved config; expected the backbone's model type")
    try:
        defaults = AutoConfig.for_model(model_type)
    except ValueError:
        raise CL2CMError(f"{where}.model_type={model_type!r} is not a model type this transformers knows") from None
    texts = [k for k, v in sub.items() if isinstance(v, str) and type(getattr(defaults, k, None)) in (int, float)]
    if texts:  # (transformers' own check would raise a non-ValueError naming neither the config nor the field's place)
        raise CL2CMError(f"{where}.{texts[0]}={sub[texts[0]]!r} is invalid; expected a number, not text")
    # A field the model type aliases (attribute_map, e.g. ConvNeXt's num_hidden_layers -> num_stages) is saved under its own name.
    missing = [name for name in _SUB_ARCHITECTURE
               if hasattr(defaults, name) and name not in sub and defaults.attribute_map.get(name) not in sub]
    if missing:
        raise CL2CMError(
            f"{where}.{missing[0]} is missing from the saved config (also missing: {missing[1:]}); it decides the "
            "architecture, so loading without it would drop layers or leave them random"
        )


class _CL2CMTextMixin:
    """Fields and checks shared by both configs: the text tower, its pooling, the shared space."""

    # Top-level fields a saved config must state (they decide the architecture or the embeddings).
    architecture_fields: tuple = ()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PreTrainedConfig.from_dict`, refusing a saved config that lacks an architecture field."""
        name = cls.__name__
        if not isinstance(config_dict, dict):
            raise CL2CMError(f"{name}: expected a mapping of config fields, got {type(config_dict).__name__}")
        missing = [field for field in cls.architecture_fields if field not in config_dict]
        if missing:
            raise CL2CMError(
                f"{name}.{missing[0]} is missing from the saved config (also missing: {missing[1:]}); it decides the "
                "architecture, so loading without it would drop layers or leave them random"
            )
        _check_saved_sub_config(name, "text_config", config_dict["text_config"])
        if config_dict.get("visual_encoder_type") == "backbone":
            _check_saved_sub_config(name, "vision_config", config_dict.get("vision_config"))
        return super().from_dict(config_dict, **kwargs)

    def _check_text_fields(self) -> None:
        name = type(self).__name__
        _check_choice(name, "pooling", self.pooling, POOLING_MODES)
        _check_positive(name, "projection_dim", self.projection_dim)
        if not isinstance(self.logit_scale_init_value, (int, float)) or self.logit_scale_init_value != self.logit_scale_init_value:
            raise CL2CMError(f"{name}.logit_scale_init_value={self.logit_scale_init_value!r} is invalid; expected a float")
        if not isinstance(self.learnable_logit_scale, bool):
            raise CL2CMError(f"{name}.learnable_logit_scale={self.learnable_logit_scale!r} is invalid; expected true/false")
        _check_sub_config(name, "text_config", self.text_config)


class CL2CMCrossLingualConfig(_CL2CMTextMixin, PreTrainedConfig):
    r"""Configuration of [`CL2CMCrossLingualModel`], the stage-1 text-text dual encoder.

    Args:
        text_config (`dict` or `PreTrainedConfig`):
            Config of any AutoModel text backbone (BERT, XLM-R, e5, mBERT, ...).
        pooling (`str`, defaults to `"mean"`):
            `"cls"` (first token) or `"mean"` (masked mean over tokens) sentence pooling.
        projection_dim (`int`, defaults to 256):
            Size of the shared embedding space.
        logit_scale_init_value (`float`, defaults to 2.6592):
            Initial log inverse temperature (CLIP's ``log(1 / 0.07)``).
        learnable_logit_scale (`bool`, defaults to `True`):
            Train the temperature; when `False` it stays at its initial value.
        share_encoders (`bool`, defaults to `True`):
            One text tower for both languages; `False` gives the target side its own tower.
        text_prefix (`str`, defaults to `""`):
            Prefix that the collators put before every text (e5 expects ``"query: "``).
    """

    model_type = "cl2cm_cross_lingual"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    architecture_fields = ("text_config", "pooling", "projection_dim", "share_encoders", "learnable_logit_scale")

    text_config: PreTrainedConfig | dict | None = None
    pooling: str = "mean"
    projection_dim: int = 256
    logit_scale_init_value: float = 2.6592
    learnable_logit_scale: bool = True
    share_encoders: bool = True
    text_prefix: str = ""
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _check_sub_config_type(type(self).__name__, "text_config", self.text_config)
        super().__post_init__(**kwargs)
        self._check_text_fields()


class CL2CMCrossModalConfig(_CL2CMTextMixin, PreTrainedConfig):
    r"""Configuration of [`CL2CMCrossModalModel`], the stage-2 visual-text dual encoder.

    Args:
        text_config, pooling, projection_dim, logit_scale_init_value, learnable_logit_scale, text_prefix:
            As in [`CL2CMCrossLingualConfig`].
        visual_encoder_type (`str`, defaults to `"features"`):
            `"features"`: precomputed features `(B, D)` per image or `(B, T, D)` frames per video.
            `"backbone"`: a vision backbone from `vision_config` run on `pixel_values`.
        visual_feature_dim (`int`, defaults to 2048):
            `D` of the precomputed features (features mode).
        visual_hidden_size (`int`, defaults to 512):
            Width of the visual head in features mode (backbone mode uses the backbone's width).
        visual_num_layers (`int`, defaults to 0):
            Transformer layers over frames; 0 pools frames by a masked mean.
        visual_num_heads (`int`, defaults to 4):
            Attention heads of those layers.
        visual_max_frames (`int`, defaults to 64):
            Frame positions the temporal layers know (longer inputs are rejected).
        visual_dropout (`float`, defaults to 0.1):
            Dropout on the visual head.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            CLIP vision or any AutoConfig vision backbone, for backbone mode.
    """

    model_type = "cl2cm_cross_modal"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
    }
    architecture_fields = (
        "text_config", "pooling", "projection_dim", "learnable_logit_scale", "visual_encoder_type",
        "visual_feature_dim", "visual_hidden_size", "visual_num_layers", "visual_num_heads", "visual_max_frames",
    )

    text_config: PreTrainedConfig | dict | None = None
    vision_config: PreTrainedConfig | dict | None = None
    pooling: str = "mean"
    projection_dim: int = 256
    logit_scale_init_value: float = 2.6592
    learnable_logit_scale: bool = True
    text_prefix: str = ""
    visual_encoder_type: str = "features"
    visual_feature_dim: int = 2048
    visual_hidden_size: int = 512
    visual_num_layers: int = 0
    visual_num_heads: int = 4
    visual_max_frames: int = 64
    visual_dropout: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for sub in ("text_config", "vision_config"):
            _check_sub_config_type(type(self).__name__, sub, getattr(self, sub))
        super().__post_init__(**kwargs)
        self._check_text_fields()
        name = type(self).__name__
        _check_sub_config(name, "vision_config", self.vision_config)
        _check_choice(name, "visual_encoder_type", self.visual_encoder_type, VISUAL_ENCODER_TYPES)
        _check_positive(name, "visual_feature_dim", self.visual_feature_dim)
        _check_positive(name, "visual_hidden_size", self.visual_hidden_size)
        _check_positive(name, "visual_num_layers", self.visual_num_layers, allow_zero=True)
        _check_positive(name, "visual_num_heads", self.visual_num_heads)
        _check_positive(name, "visual_max_frames", self.visual_max_frames)
        if not isinstance(self.visual_dropout, (int, float)) or isinstance(self.visual_dropout, bool) or not 0.0 <= self.visual_dropout < 1.0:
            raise CL2CMError(f"{name}.visual_dropout={self.visual_dropout!r} is invalid; expected a float in [0, 1)")
        if self.visual_encoder_type == "backbone" and self.vision_config is None:
            raise CL2CMError(f"{name}: visual_encoder_type='backbone' needs a vision_config")
        width = self.vision_config.hidden_size if self.visual_encoder_type == "backbone" else self.visual_hidden_size
        if self.visual_num_layers and width % self.visual_num_heads:
            raise CL2CMError(
                f"{name}: visual width {width} is not divisible by visual_num_heads={self.visual_num_heads}"
            )


__all__ = ["CL2CMCrossLingualConfig", "CL2CMCrossModalConfig"]
