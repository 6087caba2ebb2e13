"""Refuse checkpoints whose `auto_map` would make transformers import code from outside them.

With ``trust_remote_code=True`` transformers imports the module an ``auto_map`` entry names
(``"module.Class"``, the file ``module.py`` of the checkpoint). An entry with an absolute path
(``"/tmp/x.Class"``), a relative path (``"../x.Class"``, ``"sub/x.Class"``), a reference to another
repository (``"owner/repo--module.Class"``) or a module file that is a symlink out of the folder
makes it import and run code that is not part of the checkpoint. `check_auto_map` is the one place
that decides; call it on every checkpoint folder before loading it with remote code.

The rule: every entry (a string, or a list of strings and nulls as tokenizers write) is
``<module>.<Class>`` with both parts Python identifiers, and, for a folder, ``<module>.py`` is a
regular file inside the folder.

The other checks of a checkpoint's files, shared by the loading path
(`cl2cm_hf.inference`) and the push (`cl2cm_hf.hub.push`), raise `BadCheckpointError`
naming the file and the field: JSON files that are not objects (`read_json_object`), a tokenizer
without the files its class reads (`check_tokenizer_files`), image and video processor sizes out
of range (`check_processor_config`, before any image is decoded) and weights that are truncated,
corrupted or of other names and shapes than the config describes (`check_weights`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.processor_sizes import ProcessorSizeError, check_processor_sizes

_REFERENCE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


class UnsafeCheckpointError(CL2CMError):
    """A checkpoint's `auto_map` points at code outside the checkpoint (the message names the entry)."""


class BadCheckpointError(CL2CMError):
    """A file of a checkpoint is missing, unreadable or does not fit the others (the message names it)."""


def _references(auto_map) -> list[tuple[str, object]]:
    """(entry name, reference) for every reference of an auto_map; lists give ``name[i]``."""
    pairs = []
    for key, value in auto_map.items():
        if isinstance(value, (list, tuple)):
            pairs += [(f"[{key!r}][{i}]", item) for i, item in enumerate(value) if item is not None]
        else:
            pairs.append((f"[{key!r}]", value))
    return pairs


def _check_one(source: str, auto_map, folder: Path | None) -> None:
    if auto_map is None:
        return
    if not isinstance(auto_map, dict):
        raise UnsafeCheckpointError(f"{source}: auto_map is {type(auto_map).__name__}; expected a mapping")
    for entry, reference in _references(auto_map):
        where = f"{source}: auto_map{entry} = {reference!r}"
        match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        if match is None:
            raise UnsafeCheckpointError(
                f"{where} is refused: expected '<module>.<Class>' naming a module file of the checkpoint itself "
                "(no path, no '--' reference to another repository)"
            )
        if folder is None:
            continue
        module = folder / f"{match[1]}.py"
        if not module.is_file():
            raise UnsafeCheckpointError(f"{where} is refused: the checkpoint has no file {module.name}")
        resolved, root = module.resolve(), folder.resolve()
        if resolved.parent != root:
            raise UnsafeCheckpointError(f"{where} is refused: {module.name} links to {resolved}, outside the checkpoint")


def check_auto_map(folder_or_config: str | os.PathLike | dict) -> None:
    """Raise `UnsafeCheckpointError` naming the file and entry if an ``auto_map`` of a checkpoint
    folder (every ``*config.json`` in it) or of a config mapping points outside the checkpoint."""
    if isinstance(folder_or_config, dict):
        _check_one("config", folder_or_config.get("auto_map"), None)
        return
    folder = Path(folder_or_config)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder")
    for path in sorted(folder.glob("*config.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnsafeCheckpointError(f"{path}: not valid JSON ({err})") from None
        if isinstance(config, dict):
            _check_one(str(path), config.get("auto_map"), folder)


def read_json_object(path: str | os.PathLike, required: bool = True) -> dict:
    """The JSON object in `path`; {} for an absent file that is not `required`. Anything else (no
    such file, not UTF-8 JSON, a list, number or string) raises `BadCheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise BadCheckpointError(f"{path}: missing")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadCheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise BadCheckpointError(f"{path}: holds a JSON {type(value).__name__}; expected an object ({{...}})")
    return value


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
# The JSON configs a checkpoint may hold (model, generation, tokenizer, processors): each an object.
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "chat_template.json", *PROCESSOR_FILES)


def check_config_files(folder: str | os.PathLike) -> None:
    """Raise `BadCheckpointError` naming the first of the folder's `CONFIG_FILES` that is not a JSON
    object (config.json must exist; the others may be absent)."""
    for name in CONFIG_FILES:
        read_json_object(Path(folder) / name, required=name == "config.json")


# Tokenizers --------------------------------------------------------------------------------------
TOKENIZER_FILE = "tokenizer.json"


def tokenizer_files(folder: str | os.PathLike) -> list[str]:
    """The vocabulary files the folder's tokenizer class reads (``vocab_files_names`` of the class
    its tokenizer_config.json names; a plain tokenizers tokenizer: tokenizer.json)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = read_json_object(Path(folder) / "tokenizer_config.json", required=False)
    name = config.get("tokenizer_class")
    tokenizer_class = tokenizer_class_from_name(name) if isinstance(name, str) else None
    names = getattr(tokenizer_class, "vocab_files_names", None) or {"tokenizer_file": TOKENIZER_FILE}
    return sorted({file for file in names.values() if isinstance(file, str)})


def check_tokenizer_files(folder: str | os.PathLike) -> None:
    """Raise `BadCheckpointError` naming tokenizer.json when a folder with a tokenizer_config.json
    has neither it nor the other vocabulary files of its tokenizer class (transformers would fail
    deep inside tokenizers, or build a tokenizer without a vocabulary)."""
    folder = Path(folder)
    if not (folder / "tokenizer_config.json").is_file() or (folder / TOKENIZER_FILE).is_file():
        return
    others = [name for name in tokenizer_files(folder) if name != TOKENIZER_FILE]
    if others and all((folder / name).is_file() for name in others):
        return
    alternative = f" (or {' + '.join(others)})" if others else ""
    raise BadCheckpointError(f"{folder / TOKENIZER_FILE}: missing; the tokenizer of tokenizer_config.json needs it{alternative}")


# Image and video processors ---------------------------------------------------------------------
def check_processor_config(folder: str | os.PathLike) -> None:
    """Raise `BadCheckpointError` naming the file and field when an image or video processor config
    of the folder (its own file, or nested in processor_config.json) asks for sizes that are not
    whole numbers in range, a crop larger than the resized image, or absurd frame counts
    (`cl2cm_hf.processor_sizes`): checked when a checkpoint is loaded, before any image is."""
    for name in PROCESSOR_FILES:
        path = Path(folder) / name
        config = read_json_object(path, required=False)
        parts = {str(path): config}
        parts.update({f"{path}: {key}": value for key, value in config.items() if isinstance(value, dict) and key.endswith("processor")})
        for where, fields in parts.items():
            try:
                check_processor_sizes(fields, where)
            except ProcessorSizeError as err:
                raise BadCheckpointError(str(err)) from None


# Weights ------------------------------------------------------------------------------------------
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def weight_files(folder: str | os.PathLike) -> dict[str, list[str] | None]:
    """The safetensors files of a checkpoint: ``{file name: tensor names it must hold}`` from
    model.safetensors.index.json when there is one (None: model.safetensors alone, any names).
    A shard named outside the folder raises `BadCheckpointError`."""
    folder = Path(folder)
    index_path = folder / WEIGHTS_INDEX
    if not index_path.is_file():
        return {WEIGHTS: None}
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadCheckpointError(f"{index_path}: weight_map is {weight_map!r}; expected an object of tensor name -> file")
    shards: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise BadCheckpointError(f"{index_path}: weight_map[{tensor!r}] = {shard!r}; expected a .safetensors file name in the folder")
        shards.setdefault(shard, []).append(tensor)
    return shards


def _expected_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names and shapes of the model config.json describes, built on the meta
    device (nothing allocated; the installed model classes, never the folder's code)."""
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise BadCheckpointError(f"{folder / 'config.json'}: does not describe a model this installation can build ({err})") from None
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


def check_weights(folder: str | os.PathLike) -> None:
    """Raise `BadCheckpointError` naming the file unless every weight file parses as safetensors
    (the library's own header reading: every tensor's bytes inside the file, the file fully
    covered), holds the tensors the index assigns it, and the tensors have the names and shapes of
    the model config.json describes (nothing missing, unexpected or of another shape)."""
    from safetensors import safe_open

    folder = Path(folder)
    found: dict[str, tuple[int, ...]] = {}
    for name, assigned in weight_files(folder).items():
        path = folder / name
        if not path.is_file():
            raise BadCheckpointError(f"{path}: missing" + (f" (listed in {WEIGHTS_INDEX})" if assigned else ""))
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as err:
            raise BadCheckpointError(f"{path}: not a complete safetensors file ({err}); save or download it again") from None
        if assigned is not None and set(assigned) != set(shapes):
            odd = sorted(set(assigned) ^ set(shapes))[:5]
            raise BadCheckpointError(f"{path}: holds other tensors than {WEIGHTS_INDEX} assigns it ({odd})")
        found.update(shapes)
    expected = _expected_shapes(folder)
    problems = [f"{kind} {sorted(keys)[:5]} ({len(keys)} in all)"
                for kind, keys in (("missing", set(expected) - set(found)), ("unexpected", set(found) - set(expected))) if keys]
    problems += [f"{key} of shape {list(found[key])}, config.json says {list(shape)}"
                 for key, shape in expected.items() if key in found and found[key] != shape][:5]
    if problems:
        weights = folder / (WEIGHTS_INDEX if (folder / WEIGHTS_INDEX).is_file() else WEIGHTS)
        raise BadCheckpointError(f"{weights}: the weights do not fit config.json: " + "; ".join(problems))


__all__ = [
    "BadCheckpointError",
    "UnsafeCheckpointError",
    "check_auto_map",
    "check_config_files",
    "check_processor_config",
    "check_tokenizer_files",
    "check_weights",
    "read_json_object",
    "tokenizer_files",
    "weight_files",
]
