"""Check a CL2CM checkpoint folder and push it to the Hugging Face Hub.

`push_checkpoint(folder, repo_id, api=None, ...)` stages the publishable files in a temporary
folder, checks that the checkpoint is complete (`check_checkpoint`) and uploads it with
``HfApi.upload_folder`` (never ``PreTrainedModel.push_to_hub``, which replaces README.md).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

README = "README.md"
# Files a checkpoint folder may publish (top level only; subfolders such as trainer checkpoints or
# the test gallery stay local), and training leftovers that are never published.
PUBLISHED_SUFFIXES = (".json", ".safetensors", ".py", ".md", ".png", ".txt", ".model", ".yaml", ".yml", ".jinja", ".tiktoken")
PUBLISHED_NAMES = ("LICENSE", "NOTICE")
NEVER_PUBLISHED = ("trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt",
                   "gallery_captions.json")  # the last: test-set captions of the query demo (dataset licence)


class CheckpointError(ValueError):
    """A checkpoint folder is missing what a Hub repository needs to load (weights, code, card)."""


def read_json(path: Path) -> dict:
    """A JSON file's content; {} when the file does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _is_published(path: Path) -> bool:
    name = path.name
    if not path.is_file() or name.startswith(".") or name in NEVER_PUBLISHED:
        return False
    return name in PUBLISHED_NAMES or name.endswith(PUBLISHED_SUFFIXES)


def _code_files(config: Mapping) -> set[str]:
    """Local module files named in an ``auto_map`` (``module.Class``; ``repo--module.Class``
    points to another repository and needs nothing here)."""
    files = set()
    for value in (config.get("auto_map") or {}).values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                files.add(ref.rsplit(".", 1)[0] + ".py")
    return files


def check_checkpoint(folder: str | Path) -> None:
    """Raise `CheckpointError` unless `folder` holds what ``AutoModel.from_pretrained(repo,
    trust_remote_code=True)`` and the Hub page need: config.json, safetensors weights, the code
    files of ``auto_map`` and those they import (``from .x import y``), and README.md."""
    folder = Path(folder)
    problems = []
    config_path = folder / "config.json"
    config = {}
    if not config_path.is_file():
        problems.append("config.json (save_pretrained the model)")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"a readable config.json ({exc})")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        problems += [f"{shard} (listed in model.safetensors.index.json)" for shard in sorted(shards) if not (folder / shard).is_file()]
    elif not (folder / "model.safetensors").is_file():
        problems.append("model.safetensors (the weights; .bin files are not published)")
    code = _code_files(config) | _code_files(read_json(folder / "tokenizer_config.json"))
    seen = set()
    while code - seen:
        name = sorted(code - seen)[0]
        seen.add(name)
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} (named in auto_map or imported by the model code)")
            continue
        for module in re.findall(r"^\s*from\s+\.([\w.]+)\s+import", path.read_text(encoding="utf-8"), flags=re.M):
            code.add(module.replace(".", "/") + ".py")
    if not (folder / README).is_file():
        problems.append("README.md (build_card writes it)")
    if problems:
        raise CheckpointError(f"{folder} cannot be pushed, it lacks: " + "; ".join(problems))


def stage_checkpoint(folder: str | Path, staging: str | Path) -> list[str]:
    """Copy the publishable files of `folder` (model, code, tokenizer, card, plot, recipe, results;
    no subfolders, no trainer state) into `staging` and check the result; returns the file names."""
    folder, staging = Path(folder), Path(staging)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    staging.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(folder.iterdir()):
        if _is_published(path):
            shutil.copy2(path, staging / path.name)
            names.append(path.name)
    check_checkpoint(staging)
    return names


def push_checkpoint(folder: str | Path, repo_id: str, api=None, private: bool = False, revision: str | None = None,
                    commit_message: str = "Upload CL2CM checkpoint"):
    """Upload the checkpoint in `folder` to the Hub model repository `repo_id`.

    The publishable files are staged in a temporary folder (see `stage_checkpoint`; a missing
    config, weight file, code file or README.md raises `CheckpointError` before anything is sent),
    then ``api.create_repo(repo_id, private=private, exist_ok=True)`` (and ``create_branch`` for a
    `revision` other than main) and one ``api.upload_folder`` commit. `api` defaults to
    ``huggingface_hub.HfApi()`` (token from ``HF_TOKEN`` or the login). Returns the commit info
    (``.commit_url``, ``.oid``).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    with tempfile.TemporaryDirectory(prefix="cl2cm-push-") as staging:
        stage_checkpoint(folder, staging)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(folder_path=staging, repo_id=repo_id, revision=revision, commit_message=commit_message)


__all__ = ["CheckpointError", "check_checkpoint", "push_checkpoint", "stage_checkpoint"]
