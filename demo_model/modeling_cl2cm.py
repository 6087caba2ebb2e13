# Copyright 2026 The cl2cm-hf authors. Licensed under the Apache License, Version 2.0.
"""CL2CM dual encoders: the stage-1 cross-lingual network and the stage-2 cross-modal network.

Copied into every checkpoint with ``configuration_cl2cm.py`` and ``losses.py``; it imports only the
standard library, torch, transformers and those two files (as ``from .x import y``, which
``save_pretrained`` follows), so ``AutoModel.from_pretrained(..., trust_remote_code=True)`` runs it
without this package installed.
"""

import json
import os
import struct
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_cl2cm import CL2CMCrossLingualConfig, CL2CMCrossModalConfig
from .errors import CL2CMError
from .losses import info_nce
from .versioned_folders import VERSION_KEY, pinned_folder

LOGIT_SCALE_MAX = 100.0  # CLIP's clamp of the learned inverse temperature


@dataclass
class CL2CMCrossLingualOutput(ModelOutput):
    """Output of [`CL2CMCrossLingualModel`].

    Sentence embeddings are L2-normalised `(B, projection_dim)`; token embeddings are the projected,
    unnormalised token states `(B, L, projection_dim)` with their masks, for word-level alignment.
    `scale` is ``exp(logit_scale)`` clamped (the model's `scale()`: the inverse temperature; the
    `logit_scale` parameter itself stays in log space, as in CLIP), returned because DDP needs every
    parameter of the loss to pass through `forward`. `logits_per_text` (`(B, B)`, source rows, target
    columns) are the scaled similarities, under CLIP's name; `source_model_output` and
    `target_model_output` are the towers' outputs (hidden states and attentions when asked), as
    CLIP's `text_model_output`.
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    source_embeds: torch.FloatTensor | None = None
    target_embeds: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    source_token_embeds: torch.FloatTensor | None = None
    source_token_mask: torch.LongTensor | None = None
    target_token_embeds: torch.FloatTensor | None = None
    target_token_mask: torch.LongTensor | None = None
    source_model_output: BaseModelOutputWithPooling | None = None
    target_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in super().to_tuple())


@dataclass
class CL2CMCrossModalOutput(ModelOutput):
    """Output of [`CL2CMCrossModalModel`], CLIP-style.

    `text_embeds` (`(B, d)`) embed `input_ids`; `target_text_embeds` embed the optional second
    caption batch (`target_input_ids`, the MT side in stage 2) in the same forward pass, so one DDP
    forward covers every text the loss needs. `scale` is ``exp(logit_scale)`` clamped (the model's
    `scale()`: the inverse temperature of `logits_per_text`; the `logit_scale` parameter stays in log
    space, as in CLIP), returned because DDP needs every parameter of the loss to pass through `forward`.
    `text_model_output` and `vision_model_output` are what `get_text_features` and
    `get_image_features` / `get_video_features` return (hidden states and attentions when asked), as
    in CLIP's output.
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_visual: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    visual_embeds: torch.FloatTensor | None = None
    target_text_embeds: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in super().to_tuple())


def _check_mask(mask: torch.Tensor | None, expected: tuple, mask_name: str, input_name: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(expected):
        raise CL2CMError(f"{mask_name} has shape {tuple(mask.shape)} but {input_name} needs {tuple(expected)}")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` `(B, L, H)` over positions where `mask` `(B, L)` is set; all-masked rows give zeros."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class CL2CMTextTower(nn.Module):
    """A text backbone, sentence pooling and a linear projection into the shared space."""

    def __init__(self, config, backbone: nn.Module | None = None):
        super().__init__()
        self.pooling = config.pooling
        self.backbone = backbone if backbone is not None else _text_backbone_from_config(config.text_config)
        self.projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **output_flags):
        """Return `(backbone output, sentence (B, d) unnormalised, tokens (B, L, d), attention_mask (B, L))`;
        `output_flags` (`output_attentions`, `output_hidden_states`) go to the backbone."""
        if input_ids.dim() != 2:
            raise CL2CMError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_mask(attention_mask, input_ids.shape, "attention_mask", "input_ids")
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **output_flags)
        hidden = out.last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, attention_mask)
        return out, self.projection(pooled), self.projection(hidden), attention_mask


def _text_backbone_from_config(text_config):
    """Build the text backbone without its pooler head: CL2CM pools itself, and unused
    parameters would trip DDP."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(text_config)


class CL2CMFramePooler(nn.Module):
    """Pools per-frame vectors `(B, T, H)` under a mask: a masked mean, after optional temporal
    transformer layers. A single image is a one-frame video."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, max_frames: int, dropout: float):
        super().__init__()
        self.max_frames = max_frames
        self.position_embeddings = nn.Embedding(max_frames, hidden_size) if num_layers else None
        self.layers = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    hidden_size, num_heads, 4 * hidden_size, dropout, activation="gelu", batch_first=True, norm_first=True
                ),
                num_layers,
                enable_nested_tensor=False,
            )
            if num_layers
            else None
        )

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, output_hidden_states=False, output_attentions=False):
        """Return `(frame states (B, T, H), their masked mean (B, H), states before and after each
        temporal layer or None, each layer's attention maps (B, heads, T, T) or None)`."""
        states, maps = [], []
        if self.layers is not None:
            if frames.shape[1] > self.max_frames:
                raise CL2CMError(f"got {frames.shape[1]} frames but the model knows visual_max_frames={self.max_frames}")
            positions = torch.arange(frames.shape[1], device=frames.device)
            # A zero-length video keeps one attendable (zero) slot so attention stays finite.
            attend = mask.bool().clone()
            attend[:, 0] |= ~attend.any(1)
            frames = frames + self.position_embeddings(positions)
            for layer in self.layers.layers:  # the layers one by one, to report their states and maps
                states.append(frames)
                if output_attentions:  # norm_first layers attend over norm1(x)
                    normed = layer.norm1(frames)
                    maps.append(layer.self_attn(normed, normed, normed, key_padding_mask=~attend,
                                                average_attn_weights=False)[1])
                frames = layer(frames, src_key_padding_mask=~attend)
        states.append(frames)
        pooled = masked_mean(frames, mask)
        return frames, pooled, tuple(states) if output_hidden_states else None, tuple(maps) if output_attentions else None


class CheckpointMismatchError(CL2CMError):
    """A checkpoint's weights do not match the model its config describes."""


class CorruptCheckpointError(OSError):
    """A weight file of a checkpoint is truncated or corrupted; the message names the file."""


def check_safetensors_file(path: str) -> str | None:
    """What is wrong with the safetensors file `path` (header and sizes, no tensor read), or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"header of {header_len} bytes does not fit in the file ({size} bytes)"
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
        return f"unreadable header ({err})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        return "header lists a tensor without valid data offsets"
    if 8 + header_len + end != size:
        return f"tensors need {8 + header_len + end} bytes but the file has {size}"
    return None


def _weight_files(name_or_path, kwargs) -> list[str]:
    """The local safetensors files a `from_pretrained(name_or_path, **kwargs)` call reads."""
    folder = os.path.join(str(name_or_path), kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
    try:  # a hub id: the files in the local cache, if any
        from transformers.utils import cached_file

        found = cached_file(
            name_or_path, "model.safetensors", cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"),
            subfolder=kwargs.get("subfolder") or "", local_files_only=True, _raise_exceptions_for_missing_entries=False,
        )
    except Exception:
        return []
    return [found] if found else []


class CL2CMPreTrainedModel(PreTrainedModel):
    base_model_prefix = "cl2cm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Per-batch mean losses: Trainer must not rescale them by the number of items.
    loss_is_scaled_for_ga = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a truncated or corrupted ``*.safetensors`` file raises
        `CorruptCheckpointError` naming the file (safetensors' own message does not).

        Weights of a checkpoint that do not fit the config (missing, unexpected or of another shape)
        raise `CheckpointMismatchError` by default, where transformers only warns and leaves them
        random. What the caller asks for is honoured as in transformers: `ignore_mismatched_sizes=True`
        re-initialises weights of another shape (a new head, e.g. another `projection_dim`),
        `output_loading_info=True` returns `(model, info)` with every problem listed instead of
        raising, and weights given as `state_dict` without a checkpoint (`None`) are the caller's.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        # One version of a folder that a writer may replace meanwhile (`versioned_folders`).
        with pinned_folder(pretrained_model_name_or_path, getattr(kwargs.get("config"), VERSION_KEY, None)) as (folder, fits):
            if not fits:
                kwargs.pop("config")  # read while the folder held a version since removed: use this one's
            model, info = cls._load_checked(folder, *model_args, wants_info=wants_info, **kwargs)
        if folder != pretrained_model_name_or_path:
            model.config.name_or_path = str(pretrained_model_name_or_path)
        return (model, info) if wants_info else model

    @classmethod
    def _load_checked(cls, pretrained_model_name_or_path, *model_args, wants_info: bool = False, **kwargs):
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            problems = [(f, check_safetensors_file(f)) for f in _weight_files(pretrained_model_name_or_path, kwargs)]
            named = "; ".join(f"{f}: {p}" for f, p in problems if p) or f"a weight file of {pretrained_model_name_or_path}"
            raise CorruptCheckpointError(
                f"{named} (safetensors: {err}); the file is truncated or corrupted: save or download it again"
            ) from err
        kinds = ("missing_keys", "unexpected_keys") + (() if kwargs.get("ignore_mismatched_sizes") else ("mismatched_keys",))
        problems = [
            f"{kind.split('_')[0]} {sorted(map(str, keys))[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)} in all)"
            for kind in kinds
            if (keys := info.get(kind))
        ]
        if problems and not wants_info and pretrained_model_name_or_path is not None:
            raise CheckpointMismatchError(
                f"{pretrained_model_name_or_path}: the weights do not fit {cls.__name__} as its config.json describes it: "
                f"{'; '.join(problems)} weight(s); the config or the weights were changed (or belong to another model)"
            )
        return model, info

    def get_input_embeddings(self) -> nn.Module:
        """The text backbone's token embeddings (what `resize_token_embeddings` and PEFT's
        `enable_input_require_grads` work on)."""
        return self.text_model.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.backbone.set_input_embeddings(value)

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> dict:
        """`output_attentions` / `output_hidden_states` as asked, else as the config says."""
        return {
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        }

    @staticmethod
    def _text_output(tower: CL2CMTextTower, input_ids, attention_mask, token_type_ids, flags):
        """`(BaseModelOutputWithPooling with the normalised embeddings as pooler_output, projected
        token embeddings (B, L, d), their mask (B, L))` of one text tower."""
        out, sentence, tokens, mask = tower(input_ids, attention_mask, token_type_ids, **flags)
        pooled = BaseModelOutputWithPooling(
            last_hidden_state=out.last_hidden_state,
            pooler_output=nn.functional.normalize(sentence, dim=-1),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return pooled, tokens, mask

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, though we are code outside transformers: for custom code transformers skips, when
        initialising missing weights, every module whose own parameters were loaded (in case its
        `_init_weights` writes in place), which also skips a backbone's module-level init (CLIP's
        scaled attention and MLP init) and leaves those weights at N(0, 0.02). Our `_init_weights`
        writes only through `transformers.initialization`, which leaves loaded weights alone."""
        return False

    def _init_weights(self, module):
        """Heads get N(0, initializer_range); backbones keep their own init (transformers
        dispatches each PreTrainedModel child to its own `_init_weights`)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):  # torch's own init, through transformers' guarded functions
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        if isinstance(module, (CL2CMCrossLingualModel, CL2CMCrossModalModel)):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    def _make_logit_scale(self) -> None:
        """`logit_scale`: a parameter when learnable, else a (saved) buffer. A frozen parameter would
        not stay frozen: `from_pretrained` re-creates every loaded parameter with requires_grad=True."""
        scale = torch.tensor(float(self.config.logit_scale_init_value))
        if self.config.learnable_logit_scale:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped as CLIP does: the inverse temperature of the similarity logits."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    @staticmethod
    def _load_text_backbone(text: str | nn.Module, **kwargs) -> nn.Module:
        if isinstance(text, nn.Module):
            return text
        try:
            return AutoModel.from_pretrained(text, add_pooling_layer=False, **kwargs)
        except TypeError:
            return AutoModel.from_pretrained(text, **kwargs)


class CL2CMCrossLingualModel(CL2CMPreTrainedModel):
    """Stage 1: aligns source captions with their translations, sentence- and token-level.

    One text tower serves both languages unless `config.share_encoders` is False (one module and a
    flag, never one module under two names, which `save_pretrained` cannot store)."""

    config_class = CL2CMCrossLingualConfig
    main_input_name = "source_input_ids"

    def __init__(self, config: CL2CMCrossLingualConfig, text_model: nn.Module | None = None):
        super().__init__(config)
        self.text_model = CL2CMTextTower(config, backbone=text_model)
        self.target_text_model = None if config.share_encoders else CL2CMTextTower(config)
        self._make_logit_scale()
        self.post_init()

    @classmethod
    def from_towers_pretrained(cls, text: str | nn.Module, **config_kwargs) -> "CL2CMCrossLingualModel":
        """Build from a pretrained text backbone (path, hub id or module); heads start fresh.
        With `share_encoders=False` the target tower starts from the same weights."""
        backbone = cls._load_text_backbone(text)
        config = cls.config_class(text_config=backbone.config.to_dict(), **config_kwargs)
        model = cls(config, text_model=backbone)
        if model.target_text_model is not None:
            # A backbone passed as a module may carry a pooler, which the target tower is built without.
            missing, _ = model.target_text_model.backbone.load_state_dict(backbone.state_dict(), strict=False)
            if missing:
                raise CL2CMError(f"the target text tower cannot take the backbone's weights: missing {missing}")
        return model

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings` on both towers: with `share_encoders=False` the
        target tower has its own embeddings, which must take the new token ids too."""
        if self.target_text_model is not None:
            self.target_text_model.backbone.resize_token_embeddings(*args, **kwargs)
        return super().resize_token_embeddings(*args, **kwargs)

    def _tower(self, language: str) -> CL2CMTextTower:
        if language not in ("source", "target"):
            raise CL2CMError(f"language must be 'source' or 'target', got {language!r}")
        return self.target_text_model if language == "target" and self.target_text_model is not None else self.text_model

    @can_return_tuple
    def get_text_features(
        self, input_ids, attention_mask=None, token_type_ids=None, language: str = "source",
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """One side's texts: `pooler_output` holds the L2-normalised sentence embeddings
        `(B, projection_dim)` (the retrieval embeddings), `last_hidden_state` the backbone's token
        states; `return_dict=False` gives a tuple, as in transformers."""
        flags = self._output_flags(output_attentions, output_hidden_states)
        return self._text_output(self._tower(language), input_ids, attention_mask, token_type_ids, flags)[0]

    def get_token_features(self, input_ids, attention_mask=None, token_type_ids=None, language: str = "source"):
        """Projected token embeddings `(B, L, projection_dim)` and their mask `(B, L)`."""
        _, _, tokens, mask = self._tower(language)(input_ids, attention_mask, token_type_ids)
        return tokens, mask

    @can_return_tuple
    def forward(
        self,
        source_input_ids: torch.LongTensor,
        target_input_ids: torch.LongTensor,
        source_attention_mask: torch.Tensor | None = None,
        target_attention_mask: torch.Tensor | None = None,
        source_token_type_ids: torch.Tensor | None = None,
        target_token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> CL2CMCrossLingualOutput:
        if source_input_ids.shape[0] != target_input_ids.shape[0]:
            raise CL2CMError(
                f"source and target batch sizes differ: {source_input_ids.shape[0]} vs {target_input_ids.shape[0]}"
            )
        flags = self._output_flags(output_attentions, output_hidden_states)
        src_out, src_tokens, src_mask = self._text_output(
            self._tower("source"), source_input_ids, source_attention_mask, source_token_type_ids, flags
        )
        tgt_out, tgt_tokens, tgt_mask = self._text_output(
            self._tower("target"), target_input_ids, target_attention_mask, target_token_type_ids, flags
        )
        src, tgt = src_out.pooler_output, tgt_out.pooler_output
        scale = self.scale()
        loss = info_nce(src, tgt, 1.0 / scale) if return_loss else None
        return CL2CMCrossLingualOutput(
            loss=loss,
            logits_per_text=scale * src @ tgt.t(),
            source_embeds=src,
            target_embeds=tgt,
            scale=scale,
            source_token_embeds=src_tokens,
            source_token_mask=src_mask,
            target_token_embeds=tgt_tokens,
            target_token_mask=tgt_mask,
            source_model_output=src_out,
            target_model_output=tgt_out,
        )


class CL2CMFeatureEncoder(nn.Module):
    """Visual tower for precomputed features: linear to hidden, frame pooling, projection."""

    def __init__(self, config: CL2CMCrossModalConfig):
        super().__init__()
        self.feature_dim = config.visual_feature_dim
        self.input_proj = nn.Sequential(
            nn.Linear(config.visual_feature_dim, config.visual_hidden_size),
            nn.LayerNorm(config.visual_hidden_size),
            nn.GELU(),
            nn.Dropout(config.visual_dropout),
        )
        self.frame_pooler = CL2CMFramePooler(
            config.visual_hidden_size,
            config.visual_num_layers,
            config.visual_num_heads,
            config.visual_max_frames,
            config.visual_dropout,
        )
        self.projection = nn.Linear(config.visual_hidden_size, config.projection_dim, bias=False)

    def forward(self, visual_features, visual_mask=None, output_hidden_states=False, output_attentions=False):
        """Return `(frame states (B, T, H), embeddings (B, d) unnormalised, hidden states, attentions)`
        (the last two are the frame pooler's, None unless asked)."""
        if visual_features.dim() not in (2, 3):
            raise CL2CMError(
                f"visual_features must be (batch, {self.feature_dim}) or (batch, frames, {self.feature_dim}), "
                f"got shape {tuple(visual_features.shape)}"
            )
        if visual_features.shape[-1] != self.feature_dim:
            raise CL2CMError(
                f"visual_features last dim is {visual_features.shape[-1]} but the model expects "
                f"visual_feature_dim={self.feature_dim}"
            )
        frames, mask = _as_frames(visual_features, visual_mask, feature_dims=1)
        # Features come from files (float32) whatever dtype the model was loaded in.
        frames = frames.to(self.projection.weight.dtype)
        states, pooled, hidden, maps = self.frame_pooler(self.input_proj(frames), mask, output_hidden_states, output_attentions)
        return states, self.projection(pooled), hidden, maps


class CL2CMBackboneEncoder(nn.Module):
    """Visual tower on pixels: a HF vision backbone per frame, frame pooling, projection."""

    def __init__(self, config: CL2CMCrossModalConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.vision_config)
        hidden = config.vision_config.hidden_size
        self.frame_pooler = CL2CMFramePooler(
            hidden, config.visual_num_layers, config.visual_num_heads, config.visual_max_frames, config.visual_dropout
        )
        self.projection = nn.Linear(hidden, config.projection_dim, bias=False)

    def forward(self, pixel_values, visual_mask=None, **output_flags):
        """Return `(backbone output over the B*T frames, frame states (B, T, H), embeddings (B, d)
        unnormalised)`; `output_flags` (`output_attentions`, `output_hidden_states`) go to the backbone."""
        if pixel_values.dim() not in (4, 5):
            raise CL2CMError(
                f"pixel_values must be (batch, 3, H, W) or (batch, frames, 3, H, W), got shape {tuple(pixel_values.shape)}"
            )
        frames, mask = _as_frames(pixel_values, visual_mask, feature_dims=3)
        batch, num_frames = frames.shape[:2]
        # Only flags asked for: a backbone without attention maps (ConvNeXt) may not take output_attentions.
        out = self.backbone(pixel_values=frames.flatten(0, 1), **{k: v for k, v in output_flags.items() if v})
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
        states, pooled, _, _ = self.frame_pooler(pooled.reshape(batch, num_frames, -1), mask)
        return out, states, self.projection(pooled)


def _as_frames(values: torch.Tensor, mask: torch.Tensor | None, feature_dims: int):
    """View an image batch as one-frame videos and check or build the frame mask `(B, T)`."""
    if values.dim() == 1 + feature_dims:
        if mask is not None:
            raise CL2CMError("visual_mask is for frame sequences (B, T, ...); a batch of single images takes none")
        values = values.unsqueeze(1)
    frames_shape = values.shape[:2]
    if mask is None:
        return values, torch.ones(frames_shape, dtype=torch.long, device=values.device)
    _check_mask(mask, frames_shape, "visual_mask", "the frame batch")
    return values, mask


class CL2CMCrossModalModel(CL2CMPreTrainedModel):
    """Stage 2: the visual-text dual encoder used at inference.

    Text: `get_text_features(input_ids, attention_mask)`. Visual: `get_image_features(...)` on
    images, `get_video_features(...)` on frame sequences with `visual_mask`, either as precomputed
    features (`visual_encoder_type="features"`: `visual_features` `(B, D)` or `(B, T, D)`) or as
    `pixel_values` (`"backbone"`: `(B, 3, H, W)` or `(B, T, 3, H, W)`). Each returns a
    `BaseModelOutputWithPooling` whose `pooler_output` holds the L2-normalised embeddings
    `(B, projection_dim)` (CLIP leaves its projection unnormalised; ours is the retrieval embedding).
    """

    config_class = CL2CMCrossModalConfig

    def __init__(
        self,
        config: CL2CMCrossModalConfig,
        text_model: nn.Module | None = None,
        vision_model: nn.Module | None = None,
    ):
        super().__init__(config)
        self.text_model = CL2CMTextTower(config, backbone=text_model)
        if config.visual_encoder_type == "features":
            self.visual_model = CL2CMFeatureEncoder(config)
        else:
            self.visual_model = CL2CMBackboneEncoder(config, backbone=vision_model)
        self._make_logit_scale()
        self.post_init()

    @classmethod
    def from_towers_pretrained(
        cls, text: str | nn.Module, vision: str | nn.Module | None = None, **config_kwargs
    ) -> "CL2CMCrossModalModel":
        """Build from pretrained towers (paths, hub ids or modules), as
        `VisionTextDualEncoderModel.from_vision_text_pretrained` does. Without `vision` the visual
        tower reads precomputed features; a CLIP checkpoint contributes its vision half."""
        text_backbone = cls._load_text_backbone(text)
        vision_backbone = None
        if vision is not None:
            vision_backbone = vision if isinstance(vision, nn.Module) else _load_vision_backbone(vision)
            config_kwargs.update(visual_encoder_type="backbone", vision_config=vision_backbone.config.to_dict())
        config = cls.config_class(text_config=text_backbone.config.to_dict(), **config_kwargs)
        return cls(config, text_model=text_backbone, vision_model=vision_backbone)

    @can_return_tuple
    def get_text_features(
        self, input_ids, attention_mask=None, token_type_ids=None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Captions: `pooler_output` holds the L2-normalised embeddings `(B, projection_dim)`,
        `last_hidden_state` the text backbone's token states; `return_dict=False` gives a tuple."""
        flags = self._output_flags(output_attentions, output_hidden_states)
        return self._text_output(self.text_model, input_ids, attention_mask, token_type_ids, flags)[0]

    @can_return_tuple
    def get_image_features(
        self, pixel_values=None, visual_features=None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Images, `pixel_values` `(B, 3, H, W)` or `visual_features` `(B, D)`: `pooler_output` holds the
        L2-normalised embeddings; `last_hidden_state` is the vision backbone's (features mode: the
        visual head's states `(B, 1, H)`), hidden states and attentions likewise."""
        return self._visual_output(visual_features, pixel_values, None, False, output_attentions, output_hidden_states)

    @can_return_tuple
    def get_video_features(
        self, pixel_values=None, visual_features=None, visual_mask=None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Videos, `pixel_values` `(B, T, 3, H, W)` or `visual_features` `(B, T, D)`, with `visual_mask`
        `(B, T)` (1 = a frame; default all): `pooler_output` holds the L2-normalised embeddings,
        `last_hidden_state` the frame states `(B, T, H)` after the temporal layers; hidden states and
        attentions are the vision backbone's over all `B * T` frames (features mode: the temporal
        layers')."""
        return self._visual_output(visual_features, pixel_values, visual_mask, True, output_attentions, output_hidden_states)

    def _visual_output(self, visual_features, pixel_values, visual_mask, video, output_attentions, output_hidden_states):
        """Both visual methods and `forward` (`video=None`: decided by the input's shape)."""
        flags = self._output_flags(output_attentions, output_hidden_states)
        features_mode = self.config.visual_encoder_type == "features"
        if features_mode and visual_features is None:
            raise CL2CMError("this model reads precomputed features: pass visual_features, not pixel_values")
        if not features_mode and pixel_values is None:
            raise CL2CMError("this model runs a vision backbone: pass pixel_values, not visual_features")
        values, frame_dim = (visual_features, 3) if features_mode else (pixel_values, 5)
        if video is not None and values.dim() in (frame_dim - 1, frame_dim) and (values.dim() == frame_dim) != video:
            name = "visual_features" if features_mode else "pixel_values"
            shapes = {"image": "(B, D)" if features_mode else "(B, 3, H, W)",
                      "video": "(B, T, D)" if features_mode else "(B, T, 3, H, W)"}
            want, other = ("video", "image") if video else ("image", "video")
            raise CL2CMError(
                f"get_{want}_features takes {name} {shapes[want]}, got shape {tuple(values.shape)}; "
                f"{shapes[other]} goes to get_{other}_features"
            )
        if features_mode:
            states, embeds, hidden, maps = self.visual_model(values, visual_mask, **flags)
            last = states
        else:
            out, states, embeds = self.visual_model(values, visual_mask, **flags)
            hidden, maps = getattr(out, "hidden_states", None), getattr(out, "attentions", None)
            last = states if values.dim() == frame_dim else out.last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=nn.functional.normalize(embeds, dim=-1), hidden_states=hidden, attentions=maps
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        visual_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        target_input_ids: torch.LongTensor | None = None,
        target_attention_mask: torch.Tensor | None = None,
        target_token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> CL2CMCrossModalOutput:
        visual = visual_features if visual_features is not None else pixel_values
        if visual is not None and visual.shape[0] != input_ids.shape[0]:
            raise CL2CMError(f"text and visual batch sizes differ: {input_ids.shape[0]} vs {visual.shape[0]}")
        if target_input_ids is not None and target_input_ids.shape[0] != input_ids.shape[0]:
            raise CL2CMError(
                f"input_ids and target_input_ids batch sizes differ: {input_ids.shape[0]} vs {target_input_ids.shape[0]}"
            )
        flags = self._output_flags(output_attentions, output_hidden_states)
        text_output = self._text_output(self.text_model, input_ids, attention_mask, token_type_ids, flags)[0]
        vision_output = self._visual_output(
            visual_features, pixel_values, visual_mask, None, output_attentions, output_hidden_states
        )
        text_embeds, visual_embeds = text_output.pooler_output, vision_output.pooler_output
        target_embeds = (
            self._text_output(self.text_model, target_input_ids, target_attention_mask, target_token_type_ids, {})[0].pooler_output
            if target_input_ids is not None
            else None
        )
        scale = self.scale()
        logits_per_text = scale * text_embeds @ visual_embeds.t()
        loss = info_nce(text_embeds, visual_embeds, 1.0 / scale) if return_loss else None
        return CL2CMCrossModalOutput(
            loss=loss,
            logits_per_text=logits_per_text,
            logits_per_visual=logits_per_text.t(),
            text_embeds=text_embeds,
            visual_embeds=visual_embeds,
            target_text_embeds=target_embeds,
            scale=scale,
            text_model_output=text_output,
            vision_model_output=vision_output,
        )


def _load_vision_backbone(name_or_path: str) -> nn.Module:
    """A vision backbone from a checkpoint; for a full CLIP checkpoint, its vision half."""
    config = AutoConfig.from_pretrained(name_or_path)
    if getattr(config, "vision_config", None) is not None and config.model_type == "clip":
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(name_or_path, config=config.vision_config)
    return AutoModel.from_pretrained(name_or_path)


__all__ = [
    "CorruptCheckpointError",
    "CL2CMCrossLingualModel",
    "CL2CMCrossModalModel",
    "CL2CMCrossLingualOutput",
    "CL2CMCrossModalOutput",
    "CL2CMPreTrainedModel",
]
