"""Which model an index was built with: the one place checkpoints are loaded (`load_checkpoint`), what
identifies their weights (`model_revision`, `model_files`, `model_fingerprint`), a readable name for the
page, and the check that a search's model is the index's (`model_mismatch`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cl2cm_hf.errors import CL2CMError

# Files of a checkpoint folder that do not change what it computes (cards, plots, copied galleries).
_NOT_MODEL = (".md", ".png", ".jpg", ".jpeg", ".svg")


class ModelMismatchError(CL2CMError):
    """The model given to search an index is not the one the index was built with."""


def load_checkpoint(name: str | os.PathLike, device=None):
    """The cross-modal checkpoint `name` (folder or hub id) in eval mode and its processor.

    Every path through which the search package loads a model goes through here, so what a
    checkpoint is allowed to run is decided in this one function. (Torch and transformers are
    imported here, not with the module: a search with the index's query encoder needs neither.)"""
    from cl2cm_hf.inference import load_model_and_processor

    model, processor = load_model_and_processor(str(name))
    return (model.to(device) if device is not None else model), processor


def model_revision(name: str | os.PathLike, model=None) -> str:
    """What identifies the weights an index was built with: for a local folder the sha256 of its
    top-level files (weights, config, processor, code; not cards or plots), else the hub commit."""
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in _NOT_MODEL):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            digest.update(b"\0")
        return f"sha256:{digest.hexdigest()}"
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"commit:{commit}" if commit else f"name:{name}"


def model_files(name: str | os.PathLike) -> list | None:
    """(name, size, mtime_ns) of the files `model_revision` hashes, for a local folder (else None): recorded
    at build time, so that a search whose checkpoint files are unchanged skips `model_fingerprint`."""
    folder = Path(name)
    if not folder.is_dir():
        return None
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() not in _NOT_MODEL]


def model_fingerprint(model) -> dict:
    """What a model computes with, wherever it was loaded from: sha256 of its config (less the
    fields that name where it came from) and of every tensor of its state dict (name, dtype, shape
    and bytes). Equal fingerprints mean the same embeddings; the dtype counts (bf16 is another model)."""
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype")}
    import torch

    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        weights.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        weights.update(flat.view(torch.uint8).numpy())
    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return {"config": f"sha256:{config_digest}", "weights": f"sha256:{weights.hexdigest()}"}


def model_display_name(name: str | os.PathLike) -> str:
    """A name a person can read for checkpoint `name`, never a local path: the model card's
    ``model_name`` (or its model-index name), else the folder's name; a hub id as it is."""
    folder = Path(name)
    if not folder.is_dir():
        return str(name)
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(folder / "README.md").data
        index = data.get("model-index") or [{}]
        card_name = data.get("model_name") or (index[0].get("name") if isinstance(index[0], dict) else None)
    except Exception:
        card_name = None
    return str(card_name) if isinstance(card_name, str) and card_name.strip() else folder.resolve().name


def model_mismatch(folder: Path, metadata: dict, model, given: str) -> str | None:
    """Why `model` (named `given`) is not the model the index in `folder` was built with, or None."""
    built = f"{metadata.get('model')}"
    dim = getattr(model.config, "projection_dim", None)
    if dim is not None and metadata.get("dim") and dim != metadata["dim"]:
        raise ModelMismatchError(f"{folder}: built with {built} (dim {metadata['dim']}); {given} embeds in dim {dim}: "
                                 "it cannot search this index")
    recorded = metadata.get("model_fingerprint")
    if given == built and metadata.get("model_files") and metadata["model_files"] == model_files(built):
        return None  # the very files the index was built with (same names, sizes, mtimes): no need to hash the weights
    if not isinstance(recorded, dict):
        revision = model_revision(given, model) if given == built else None
        if revision == metadata.get("model_revision"):
            return None
        return (f"{folder}: built with {built} at {metadata.get('model_revision')} (the index records no fingerprint "
                f"of its model); {given} cannot be checked against it")
    found = model_fingerprint(model)
    differs = [part for part in ("weights", "config") if found.get(part) != recorded.get(part)]
    if not differs:
        return None
    def short(fingerprint: dict) -> str:
        return ", ".join(f"{part} {str(fingerprint.get(part))[:19]}" for part in differs)

    now = "that checkpoint has changed since" if given == built else f"{given} has other {' and '.join(differs)}"
    return f"{folder}: built with {built} ({short(recorded)}), but {now} ({short(found)})"
