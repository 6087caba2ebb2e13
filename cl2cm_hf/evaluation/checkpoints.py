"""Loading a trained checkpoint (folder or hub id) for evaluation, query and search: the one place
that decides what a checkpoint may run.

A hub id is first resolved to its local snapshot folder, so the same checks apply to both: the
folder exists and holds a config.json (a JSON object) of the expected model type, its `auto_map`
names only code inside it (`cl2cm_hf.checkpoint_safety.check_auto_map`) before transformers
imports that code, its tokenizer has the files it reads and its processor sizes are in range
(before any image is decoded). A folder being replaced by a new version is read as one version
(`cl2cm_hf.versioned_folders.pinned_folder`: the model, the tokenizer and the processor alike).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModel, AutoProcessor

from ..checkpoint_safety import check_auto_map, check_config_files, check_processor_config, check_tokenizer_files, read_json_object
from ..versioned_folders import pinned_folder
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


def check_folder(folder: Path, model_type: str, name: str | Path | None = None) -> None:
    """Raise `ValueError` naming the file unless `folder` is a checkpoint of `model_type` that may be
    loaded: config.json, auto_map, tokenizer files and processor sizes (see the module doc)."""
    name = folder if name is None else name
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{name} is not a checkpoint: it has no config.json")
    found = read_json_object(config_path).get("model_type")
    if found != model_type:
        raise ValueError(f"{name} is a {found!r} checkpoint; expected a {model_type!r} one")
    check_config_files(folder)
    check_auto_map(folder)
    check_tokenizer_files(folder)
    check_processor_config(folder)


def load_model_and_processor(name: str | Path, model_type: str = CROSS_MODAL):
    """A checkpoint in eval mode and its processor, both read from one version of its folder; one
    saved before processors were (tokenizer only) gets one built from its config's text prefix."""
    with pinned_folder(checkpoint_folder(name)) as (folder, _):
        folder = Path(folder)
        check_folder(folder, model_type, name)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return model, as_processor(processor, model.config.text_prefix)
