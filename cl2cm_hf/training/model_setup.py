"""Build the two networks of a run from its settings: pretrained towers or small towers from
scratch (a vision backbone from `vision_config`, with the image processor that feeds it), stage-2
text tower from stage 1, frozen lower text layers (served from the run's `FrozenLayerStore` under
`cache_frozen_text_layers`), and the frozen stage-1 teacher (from this run, or an existing stage-1
folder loaded with its own tokenizer by `load_teacher`)."""

import copy
import json
import logging
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel
from cl2cm_hf.checkpoint_safety import check_auto_map
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.inference import as_processor
from cl2cm_hf.training.arguments import ModelArguments
from cl2cm_hf.training.frozen_layers import FrozenLayerStore, cache_frozen_layers, plain_backbone


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
        raise CL2CMError(f"vision_config.model_type={model_type!r}: transformers has no Pil image processor for it")
    if not isinstance(side, int) or isinstance(side, bool) or side < 1:
        raise CL2CMError(f"vision_config.image_size={side!r}: expected the input side in pixels (a positive integer)")
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
        raise CL2CMError("cache_frozen_text_layers: pass the run's FrozenLayerStore (frozen_layers=...)")
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
        raise CL2CMError("visual_encoder_type: backbone needs vision_model (a folder or hub id) or vision_config")
    vision = scratch_vision_backbone(args.vision_config) if args.vision_config else args.vision_model
    from_stage1 = cross_lingual is not None and args.init_text_from_cross_lingual
    # A copy: the stage-1 network stays the teacher.
    text = copy.deepcopy(plain_backbone(cross_lingual.text_model.backbone)).requires_grad_(True) if from_stage1 else args.text_model
    if text is not None:
        model = CL2CMCrossModalModel.from_towers_pretrained(text, vision, **kwargs)
    elif vision is not None:
        raise CL2CMError("a vision backbone needs a pretrained text tower (text_model) or a stage-1 model")
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


class TeacherError(CL2CMError):
    """`cross_lingual_model` is not a stage-1 folder this run can learn from (the message names the
    path and what was expected)."""


_STAGE1 = f"a stage-1 model folder (model_type {CL2CMCrossLingualConfig.model_type!r}: <output_dir>/cross_lingual of a run)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_COMPARED_TEXTS = 1000  # per side: enough to catch another vocabulary, cheap for any dataset


def check_teacher_folder(path: str) -> Path:
    """The folder `cross_lingual_model` names, refused unless it is a stage-1 checkpoint: a missing
    path, a file, a folder without a valid ``config.json``, weights or tokenizer, a stage-2 folder
    (model_type ``cl2cm_cross_modal``) or another model, and an ``auto_map`` pointing outside the
    folder (`check_auto_map`) are each named. Reads only small files and runs none of the folder's
    code, so a run checks its teacher before it builds any data."""
    folder, where = Path(path), f"cross_lingual_model={str(path)!r}"
    if not folder.exists():
        raise TeacherError(f"{where}: no such file or folder; expected {_STAGE1}")
    if not folder.is_dir():
        raise TeacherError(f"{where} is a file; expected {_STAGE1}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TeacherError(f"{where} is not a model checkpoint (no config.json); expected {_STAGE1}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TeacherError(f"{config_file}: not valid JSON ({err}); expected the config of {_STAGE1}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type == CL2CMCrossModalConfig.model_type:
        raise TeacherError(
            f"{where} is a stage-2 (cross-modal) model folder (model_type {model_type!r}); the teacher is {_STAGE1}"
        )
    if model_type != CL2CMCrossLingualConfig.model_type:
        raise TeacherError(f"{config_file}: model_type={model_type!r}; expected {_STAGE1}")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise TeacherError(f"{where} has no model.safetensors: not a complete checkpoint; expected {_STAGE1}")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise TeacherError(f"{where} has no tokenizer ({', '.join(_TOKENIZER_FILES)}): the teacher is fed with its own")
    check_auto_map(folder)
    return folder


def _tokenization_difference(run_processor, teacher_processor, texts: list[str]) -> str | None:
    """How the two processors tokenize differently (vocabulary, or the ids of `texts`), or None."""
    run_vocab, teacher_vocab = run_processor.tokenizer.get_vocab(), teacher_processor.tokenizer.get_vocab()
    ids = [p(text=texts)["input_ids"] for p in (run_processor, teacher_processor)]
    differ = sum(a != b for a, b in zip(*ids))
    same_vocab = run_vocab == teacher_vocab
    if same_vocab and not differ:
        return None
    vocab = "the same vocabulary" if same_vocab else (
        f"vocabularies of {len(run_vocab)} and {len(teacher_vocab)} tokens, "
        f"{sum(teacher_vocab.get(t) != i for t, i in run_vocab.items())} tokens with other ids"
    )
    return f"{differ} of {len(texts)} training texts get other token ids ({vocab})"


def load_teacher(path: str, run_processor, train_pairs, init_text_from_teacher: bool):
    """The stage-1 network in folder `path` (`check_teacher_folder` first, then
    ``from_pretrained(..., trust_remote_code=True)``) and the processor to feed it with: None when
    the folder's own tokenizer (with the model's ``text_prefix``) tokenizes the run's training texts
    as `run_processor` does, else that processor.

    A teacher that tokenizes differently is fed with its own processor (by the collator, or when its
    embeddings are precomputed). With `init_text_from_teacher` (``init_text_from_cross_lingual``)
    the stage-2 text tower is a copy of the teacher's, which reads the teacher's token ids too: no
    separate teacher input can fix the student, so the mismatch is refused before training, naming
    the settings that fix it."""
    folder = check_teacher_folder(path)
    teacher = AutoModel.from_pretrained(folder, trust_remote_code=True)
    if not hasattr(teacher, "get_text_features") or getattr(teacher.config, "model_type", None) != CL2CMCrossLingualConfig.model_type:
        raise TeacherError(f"cross_lingual_model={str(path)!r} loaded as {type(teacher).__name__}; expected {_STAGE1}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise TeacherError(f"cross_lingual_model={str(path)!r}: its tokenizer does not load ({err})") from None
    processor = as_processor(tokenizer, teacher.config.text_prefix)
    texts = [t for side in ("source_text", "target_text") for t in train_pairs[side][:_COMPARED_TEXTS]]
    difference = _tokenization_difference(run_processor, processor, texts)
    if difference is None:
        return teacher, None
    if init_text_from_teacher:
        prefix = teacher.config.text_prefix
        raise TeacherError(
            f"cross_lingual_model={str(path)!r} tokenizes differently from this run: {difference}. With "
            "init_text_from_cross_lingual: true the stage-2 text tower starts as the stage-1 tower and reads its "
            f"token ids: set tokenizer: {str(path)!r}{f' and text_prefix: {prefix!r}' if prefix else ''} (the "
            "stage-1 folder's tokenizer), or init_text_from_cross_lingual: false (a text tower of its own; the teacher "
            "is then fed with its own tokenizer)"
        )
    logging.getLogger("cl2cm").info("the teacher %s is fed with its own tokenizer: %s", path, difference)
    return teacher, processor


def freeze_lower_layers(backbone, num_layers: int) -> None:
    """Freeze the embeddings and the lowest `num_layers` transformer layers (-1: the whole backbone)."""
    if num_layers == 0:
        return
    if num_layers < 0:
        backbone.requires_grad_(False)
        return
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise CL2CMError(f"freeze_text_layers: cannot find encoder.layer in {type(backbone).__name__}")
    if num_layers > len(layers):
        raise CL2CMError(f"freeze_text_layers={num_layers} but the text backbone has {len(layers)} layers")
    backbone.embeddings.requires_grad_(False)
    for layer in layers[:num_layers]:
        layer.requires_grad_(False)
