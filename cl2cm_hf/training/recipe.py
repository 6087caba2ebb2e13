"""A run's recipe: the project defaults, a YAML file and overrides merged and type-checked
(`load_config`), then the argument dataclasses built and checked together (`parse_config`,
`RunSettings`). A number setting takes a number or text that spells one; a key given twice in a
recipe is refused naming both lines; on the command line a list setting takes one or more values."""

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml
from transformers import TrainingArguments

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.training.allowed import TRAINING_ALLOWED, Allowed, check_value
from cl2cm_hf.training.arguments import ARGUMENT_CLASSES, TRAINING_DEFAULTS, DataArguments, ModelArguments
from cl2cm_hf.training.method_arguments import CL2CMArguments


def _allowed_by_key() -> dict[str, Allowed]:
    allowed = dict(TRAINING_ALLOWED)
    for cls in ARGUMENT_CLASSES[:-1]:
        allowed.update({f.name: f.metadata["allowed"] for f in dataclasses.fields(cls) if "allowed" in f.metadata})
    return allowed


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
        raise CL2CMError(f"{source}: key '{key}' expects {hint}, got {value!r}{hint_text}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise CL2CMError(f"{source}: key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (typing.Any,)
        return [_check_type(key, v, item, source) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise CL2CMError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        return value
    if hint is typing.Any or not isinstance(hint, type):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str):
        value = _number_from_text(value, hint)
    if hint is bool and not isinstance(value, bool):
        raise CL2CMError(f"{source}: key '{key}' expects true/false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise CL2CMError(f"{source}: key '{key}' expects an integer, got {value!r}")
    if issubclass(hint, str) and not isinstance(value, str):
        # Enum-typed Trainer fields (e.g. eval_strategy) are str subclasses that accept their values.
        raise CL2CMError(f"{source}: key '{key}' expects a string, got {value!r}")
    if hint in (int, float) and not isinstance(value, hint):
        raise CL2CMError(f"{source}: key '{key}' expects {hint.__name__}, got {value!r}")
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
        raise CL2CMError(f"command line: --{key} takes one value, got {len(tokens)}: {' '.join(tokens)}")
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
            raise CL2CMError(f"command line: expected --key value, got {token!r}")
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
                raise CL2CMError(f"{key_node.start_mark.name}: key '{key}' is given twice (line {seen[key]} and line {line})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None, overrides: Mapping | list[str] | None = None) -> dict:
    """The merged, type-checked settings of a run: project defaults < YAML file < `overrides`: a
    mapping of settings (values as a recipe holds them), or ``--key value`` command-line tokens."""
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
            raise CL2CMError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise CL2CMError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        sources.append((str(path), loaded))
    if isinstance(overrides, Mapping):
        sources.append(("overrides", dict(overrides)))
    else:
        sources.append(("command line", _parse_overrides(list(overrides or []))))
    for source, mapping in sources:
        for key, value in mapping.items():
            if key not in types_by_key:
                raise CL2CMError(f"{source}: unknown key '{key}' (`cl2cm-train --help` lists the settings)")
            if source == "command line":
                value = _from_command_line(value, types_by_key[key], key)
            values[key] = _check_type(key, value, types_by_key[key], source)
            check_value(key, values[key], allowed_by_key.get(key), source)
    return values


def parse_config(values: dict):
    """Build the four argument dataclasses from merged settings (as `HfArgumentParser.parse_dict`
    does; its argparse set-up would reject the fields' ``allowed`` metadata)."""
    unknown = set(values) - set(_field_types())
    if unknown:
        raise CL2CMError(f"unknown key(s) {sorted(unknown)} (see cl2cm_hf/training/arguments.py for the settings)")
    parsed = tuple(
        cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
        for cls in ARGUMENT_CLASSES
    )
    check_combinations(*parsed)
    return parsed


@dataclasses.dataclass
class RunSettings:
    """Everything a run is set up from: the three groups of CL2CM settings, Trainer's, and the merged
    recipe they were parsed from (what `training_config.yaml` reproduces)."""

    model: ModelArguments
    data: DataArguments
    method: CL2CMArguments
    training: TrainingArguments
    recipe: dict

    @property
    def groups(self) -> tuple:
        """The four argument objects in `parse_config`'s order."""
        return self.model, self.data, self.method, self.training

    @classmethod
    def from_recipe(cls, values: dict) -> "RunSettings":
        return cls(*parse_config(values), recipe=values)

    @classmethod
    def load(cls, path: str | Path | None, overrides: Mapping | list[str] | None = None) -> "RunSettings":
        """`load_config` then `parse_config`."""
        return cls.from_recipe(load_config(path, overrides))


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
            raise CL2CMError(
                f"kt_teacher_entropy={cl2cm_args.kt_teacher_entropy} is above what the batch allows: a teacher row spans "
                f"at most {columns} columns ({batch_text} + kt_queue_size={cl2cm_args.kt_queue_size}), and the entropy "
                f"of a distribution over {columns} columns is at most ln({columns}) = {math.log(columns):.4g} nats"
            )
    group = cl2cm_args.kt_neighbour_group_size
    if group and training_args.per_device_train_batch_size % group:
        raise CL2CMError(
            f"kt_neighbour_group_size={group} must divide per_device_train_batch_size="
            f"{training_args.per_device_train_batch_size} (each batch is made of whole groups)"
        )
    towers = [("text_hidden_size", "text_num_heads")] if model_args.text_model is None else []
    towers += [("visual_hidden_size", "visual_num_heads")] if model_args.visual_num_layers else []
    for width, heads in towers:
        if getattr(model_args, width) % getattr(model_args, heads):
            raise CL2CMError(f"{width}={getattr(model_args, width)} must be a multiple of {heads}={getattr(model_args, heads)}")
    if model_args.text_model is None:  # a tower built from scratch: its depth is known now
        for key in ("freeze_text_layers", "cl_freeze_text_layers"):
            if (getattr(model_args, key) or 0) > model_args.text_num_layers:
                raise CL2CMError(f"{key}={getattr(model_args, key)} is more layers than text_num_layers={model_args.text_num_layers}")
    if data_args.dataset == "demo" and data_args.demo_pixels != (model_args.visual_encoder_type == "backbone"):
        raise CL2CMError(
            f"demo_pixels={data_args.demo_pixels} with visual_encoder_type={model_args.visual_encoder_type!r}: pictures "
            "are read by a vision backbone (demo_pixels: true with backbone), features otherwise"
        )
    if data_args.demo_video_files and not (data_args.demo_pixels and data_args.demo_visual_kind == "video"):
        raise CL2CMError("demo_video_files: true writes the demo videos as .mp4; it needs demo_pixels: true and demo_visual_kind: video")
    stage = cl2cm_args.stage
    if cl2cm_args.cross_lingual_model and stage != "cm":
        raise CL2CMError(f"cross_lingual_model is the teacher of stage cm; with stage {stage} the run trains stage 1 itself")
    if stage == "cm" and not cl2cm_args.cross_lingual_model and cl2cm_args.needs_teacher_embeddings:
        using = "lambda_kt > 0" if cl2cm_args.lambda_kt else f"kt_neighbour_group_size={cl2cm_args.kt_neighbour_group_size}"
        raise CL2CMError(f"stage cm with {using} needs cross_lingual_model (a stage-1 folder: the teacher)")


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
