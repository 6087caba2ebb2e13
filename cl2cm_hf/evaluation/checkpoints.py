"""Loading a trained checkpoint (folder or hub id) for evaluation, query and search: the one place
that decides what a checkpoint may run.

A hub id is first resolved to its local snapshot folder, so the same checks apply to both: the
folder exists and holds a config.json of the expected model type, and its `auto_map` names only
code inside it (`cl2cm_hf.checkpoint_safety.check_auto_map`) before transformers imports that code.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModel, AutoProcessor

from ..checkpoint_safety import check_auto_map
from .encoding import as_processor

CROSS_MODAL = "cl2cm_cross_modal"


def checkpoint_folder(name: str | Path) -> Path:
    """The local folder of checkpoint `name`: the folder itself, or a hub id's snapshot (from the
    cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name).expanduser()
    try:
        validate_repo_id(str(name))
        looks_local = path.exists() or str(name).startswith(("/", ".", "~"))
    except HFValidationError:  # not a hub id: a path
        looks_local = True
    if looks_local:
        if not path.is_dir():
            raise ValueError(f"{name} is not a checkpoint: no such folder")
        return path
    return Path(snapshot_download(str(name)))


def checked_folder(name: str | Path, model_type: str) -> Path:
    """`checkpoint_folder(name)` after checking its config.json (present, readable, of `model_type`)
    and its `auto_map`."""
    folder = checkpoint_folder(name)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{name} is not a checkpoint: it has no config.json")
    try:
        found = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{config_path}: not a readable config ({err})") from err
    if found != model_type:
        raise ValueError(f"{name} is a {found!r} checkpoint; expected a {model_type!r} one")
    check_auto_map(folder)
    return folder


def load_model_and_processor(name: str | Path, model_type: str = CROSS_MODAL):
    """A checkpoint in eval mode and its processor; one saved before processors were (tokenizer only)
    gets one built from its config's text prefix."""
    folder = checked_folder(name, model_type)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return model, as_processor(processor, model.config.text_prefix)
