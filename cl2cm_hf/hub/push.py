"""Check a CL2CM checkpoint folder and push it to the Hugging Face Hub.

`push_checkpoint(folder, repo_id, api=None, ...)` copies the files a checkpoint consists of
(`checkpoint_files`: an explicit list, nothing else) into a temporary folder, checks the copy
(`check_checkpoint`: configs, weights against the config, tokenizer, processor, code, card) and
uploads it with ``HfApi.upload_folder`` (never ``PreTrainedModel.push_to_hub``, which replaces
README.md). A file that is a symlink out of the folder is refused; anything not on the list (notes,
secrets, trainer state, the test gallery) stays local and is logged as not published.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from transformers.tokenization_utils_base import CHAT_TEMPLATE_FILE

from cl2cm_hf.checkpoint_safety import (
    CONFIG_FILES,
    WEIGHTS_INDEX,
    BadCheckpointError,
    UnsafeCheckpointError,
    check_auto_map,
    check_processor_config,
    check_tokenizer_files,
    check_weights,
    read_json_object,
    tokenizer_files,
    weight_files,
)
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.versioned_folders import pinned_folder

logger = logging.getLogger(__name__)

README = "README.md"
# What a checkpoint consists of besides its weights, tokenizer vocabulary and code (found from its
# files): configs, tokenizer and processor files, the card, and the run's recipe and test results
# that the card describes; LICENSE/NOTICE as a repository carries them.
CHECKPOINT_CONFIGS = (*CONFIG_FILES, CHAT_TEMPLATE_FILE)
RUN_FILES = ("training_config.yaml", "test_results.json", "LICENSE", "NOTICE")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_CARD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)|<img\s[^>]*src=[\"']([^\"']+)", re.I)
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.([\w.]+)\s+import", re.M)


class CheckpointError(CL2CMError):
    """A checkpoint folder is missing what a Hub repository needs to load (weights, code, card), or
    holds a file that must not be published (a symlink out of the folder)."""


def read_json(path: Path) -> dict:
    """A JSON object file's content; {} when the file does not exist (`BadCheckpointError` naming
    the file when it is not a JSON object)."""
    return read_json_object(path, required=False)


def _auto_map_modules(config: Mapping) -> set[str]:
    """Local module files named in an ``auto_map`` (``module.Class``; ``repo--module.Class``
    points to another repository and needs nothing here)."""
    files = set()
    auto_map = config.get("auto_map")
    for value in (auto_map.values() if isinstance(auto_map, Mapping) else ()):
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                files.add(ref.rsplit(".", 1)[0] + ".py")
    return files


def code_files(folder: Path) -> tuple[list[str], list[str]]:
    """(present, missing) code files of the checkpoint: those its configs' ``auto_map`` name and
    those they import (``from .x import y``, as transformers copies them)."""
    wanted = set()
    for name in CONFIG_FILES:
        try:
            wanted |= _auto_map_modules(read_json(folder / name))
        except BadCheckpointError:
            pass  # check_checkpoint names the file
    seen, missing = set(), []
    while wanted - seen:
        name = sorted(wanted - seen)[0]
        seen.add(name)
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        wanted |= {module.replace(".", "/") + ".py" for module in _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8"))}
    return sorted(seen - set(missing)), missing


def _card_images(folder: Path) -> set[str]:
    """The images at the top of the folder that README.md shows (the recall plot): local, not
    hidden, with an image suffix (a card linking ``.env`` as an image publishes nothing)."""
    readme = folder / README
    if not readme.is_file():
        return set()
    refs = {(a or b).removeprefix("./") for a, b in _CARD_IMAGE.findall(readme.read_text(encoding="utf-8", errors="replace"))}
    return {ref for ref in refs if Path(ref).name == ref and not ref.startswith(".") and ref.lower().endswith(IMAGE_SUFFIXES)}


def checkpoint_files(folder: str | Path) -> list[str]:
    """The names of the files a checkpoint consists of that `folder` holds: configs, weights (and
    the index with the shards it lists), tokenizer and processor files, the code of ``auto_map``,
    the card and the images it shows, the run's recipe and test results. Nothing else is published."""
    folder = Path(folder)
    names = set(CHECKPOINT_CONFIGS) | set(RUN_FILES) | {README, WEIGHTS_INDEX} | _card_images(folder) | set(code_files(folder)[0])
    for found in (weight_files, tokenizer_files):
        try:
            names |= set(found(folder))
        except BadCheckpointError:
            pass  # check_checkpoint names the file
    return sorted(name for name in names if (folder / name).is_file())


def _inside(folder: Path, name: str) -> Path:
    """The file `name` of `folder` to copy; `CheckpointError` if it is a symlink leading out of it."""
    path = folder / name
    resolved = path.resolve()
    if resolved.parent != folder.resolve():
        raise CheckpointError(
            f"{path} is a symlink to {resolved}, not a file of the checkpoint folder: refused (copy the file into the folder)"
        )
    return resolved


def check_checkpoint(folder: str | Path) -> None:
    """Raise `CheckpointError` listing every problem unless `folder` holds what
    ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` and the Hub page need: JSON object
    configs, safetensors weights that parse and fit config.json (names and shapes), the tokenizer
    files, processor sizes in range, the code files of ``auto_map`` (and what they import, all
    inside the checkpoint) and README.md."""
    folder = Path(folder)
    problems = []

    def attempt(check, *args):
        try:
            check(*args)
            return True
        except (BadCheckpointError, UnsafeCheckpointError) as err:
            problems.append(str(err))
            return False

    if attempt(read_json_object, folder / "config.json"):
        attempt(check_weights, folder)
    for name in CONFIG_FILES:
        if name != "config.json":
            attempt(read_json, folder / name)
    attempt(check_tokenizer_files, folder)
    attempt(check_processor_config, folder)
    problems += [f"{folder / name}: missing (named in auto_map or imported by the model code)" for name in code_files(folder)[1]]
    if not (folder / README).is_file():
        problems.append(f"{folder / README}: missing (build_card writes it)")
    try:
        check_auto_map(folder)
    except UnsafeCheckpointError as err:
        problems.append(f"code inside the checkpoint only ({err})")
    if problems:
        raise CheckpointError(f"{folder} cannot be pushed: " + "; ".join(dict.fromkeys(problems)))


def stage_checkpoint(folder: str | Path, staging: str | Path) -> list[str]:
    """Copy the files of the checkpoint in `folder` (`checkpoint_files`; one version of a folder
    being replaced) into `staging` and check the copy; returns the file names. A symlink out of the
    folder raises `CheckpointError`; the files left out are logged."""
    folder, staging = Path(folder), Path(staging)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    staging.mkdir(parents=True, exist_ok=True)
    with pinned_folder(folder) as (real, _):
        real = Path(real)
        names = checkpoint_files(real)
        sources = {name: _inside(real, name) for name in names}
        for name, source in sources.items():
            shutil.copyfile(source, staging / name)
        left_out = sorted(p.name + ("/" if p.is_dir() else "") for p in real.iterdir() if p.name not in sources)
    if left_out:
        logger.info("%s: not published (not part of a checkpoint): %s", folder, ", ".join(left_out))
    try:
        check_checkpoint(staging)  # the copy is what is uploaded
    except CheckpointError as err:  # named by the user's paths, not the temporary copy's
        raise CheckpointError(str(err).replace(str(staging), str(folder))) from None
    return names


def push_checkpoint(folder: str | Path, repo_id: str, api=None, private: bool = False, revision: str | None = None,
                    commit_message: str = "Upload CL2CM checkpoint"):
    """Upload the checkpoint in `folder` to the Hub model repository `repo_id`.

    The checkpoint's files are staged in a temporary folder and checked (see `stage_checkpoint`;
    any problem raises `CheckpointError` before anything is sent), then
    ``api.create_repo(repo_id, private=private, exist_ok=True)`` (and ``create_branch`` for a
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


__all__ = ["CheckpointError", "check_checkpoint", "checkpoint_files", "push_checkpoint", "stage_checkpoint"]
