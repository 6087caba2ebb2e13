"""Inference, the one path every consumer takes: loading a checkpoint (folder or hub id) with its
checks, and encoding texts through a processor (which adds the model's text prefix) and visual items
through one lookup whatever their form, in batches. Evaluation, teacher embeddings, the collators,
search and the command-line tools all go through it.

A hub id is first resolved to its local snapshot folder, so the same checks apply to both: the
folder exists and holds a config.json (a JSON object) of the expected model type, its `auto_map`
names only code inside it (`cl2cm_hf.checkpoint_safety.check_auto_map`) before transformers
imports that code, its tokenizer has the files it reads and its processor sizes are in range
(before any image is decoded). A folder being replaced by a new version is read as one version
(`cl2cm_hf.versioned_folders.pinned_folder`: the model, the tokenizer and the processor alike)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor, ProcessorMixin

import cl2cm_hf.auto_classes  # noqa: F401 (registers the Auto classes: every user of models goes through here)
from cl2cm_hf.checkpoint_safety import check_auto_map, check_config_files, check_processor_config, check_tokenizer_files, read_json_object
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.processing_cl2cm import CL2CMTextProcessor
from cl2cm_hf.versioned_folders import pinned_folder

_TOKENIZER_KEYS = ("input_ids", "attention_mask", "token_type_ids")
CROSS_MODAL = "cl2cm_cross_modal"


def as_processor(tokenizer_or_processor, text_prefix: str = ""):
    """A CL2CM processor as given (e.g. from `AutoProcessor.from_pretrained`), or a tokenizer
    wrapped in a `CL2CMTextProcessor` with `text_prefix`."""
    if isinstance(tokenizer_or_processor, ProcessorMixin):
        own = getattr(tokenizer_or_processor, "text_prefix", None)
        if text_prefix and text_prefix != own:
            raise CL2CMError(f"text_prefix={text_prefix!r} differs from the processor's own text_prefix={own!r}")
        return tokenizer_or_processor
    return CL2CMTextProcessor(tokenizer_or_processor, text_prefix=text_prefix)


def tokenize(processor, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Texts padded to the longest and truncated to `max_length`, as tensors (``token_type_ids``
    only if the tokenizer makes them); the processor adds the text prefix."""
    encoded = processor(text=list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {key: encoded[key] for key in _TOKENIZER_KEYS if key in encoded}


def visual_inputs(store, visual_ids: Sequence[str], processor=None) -> dict[str, torch.Tensor]:
    """Model inputs of `visual_ids` from a store: ``{store.output_key: values}`` plus ``visual_mask``
    for frame sequences. A `VisualFeatureStore` gives ``visual_features`` ``(N, D)`` or
    ``(N, T, D)``; an `ImagePathStore` gives ``pixel_values`` decoded by `processor`'s image
    (video files: video) processor when it has one (else the store's own)."""
    values, mask = store.lookup(list(visual_ids), getattr(processor, "image_processor", None), getattr(processor, "video_processor", None))
    inputs = {store.output_key: values}
    if mask is not None:
        inputs["visual_mask"] = mask
    return inputs


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays short (longest first,
    which also surfaces out-of-memory errors at the start)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def pooled(output) -> torch.Tensor:
    """The embeddings of a `get_*_features` output (`pooler_output`); a tensor passes through."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed_visual(model, **inputs) -> torch.Tensor:
    """Normalised embeddings of one visual batch: `get_video_features` for frame sequences
    (``visual_features (B, T, D)`` or ``pixel_values (B, T, 3, H, W)``), else `get_image_features`."""
    values = inputs.get("visual_features", inputs.get("pixel_values"))
    video = values is not None and values.dim() in (3, 5)
    return pooled((model.get_video_features if video else model.get_image_features)(**inputs))


def encode_texts(
    encode: Callable[..., torch.Tensor],
    processor,
    texts: Sequence[str],
    batch_size: int = 256,
    max_length: int = 64,
    device: torch.device | str | None = None,
    sort_by_length: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Embed `texts` with `encode(input_ids=..., attention_mask=...)` (e.g. a model's
    `get_text_features`; a model output gives its `pooler_output`) and return `(len(texts), d)` in the input order. `processor`: a CL2CM
    processor (it adds the text prefix); see `as_processor` to wrap a bare tokenizer.

    With `sort_by_length`, texts are tokenized once, batched by length and padded per batch only as
    far as the batch needs; the rows are put back in input order."""
    if len(texts) == 0:
        raise CL2CMError("encode_texts got no texts")
    encoded = processor(text=list(texts), truncation=True, max_length=max_length)["input_ids"]
    if sort_by_length:
        batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    else:
        batches = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
    pad_kwargs = {} if sort_by_length else {"padding": "max_length", "max_length": max_length}
    out = None
    for batch in tqdm(batches, desc="encode texts", disable=not progress):
        features = processor.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt", **pad_kwargs)
        features = {k: v.to(device) for k, v in features.items() if k in ("input_ids", "attention_mask")}
        embeds = pooled(encode(**features)).float().cpu()
        if out is None:
            out = torch.empty(len(texts), embeds.shape[1])
        out[torch.tensor(batch)] = embeds
    return out


@torch.no_grad()
def encode_visual(
    model,
    source,
    visual_ids: Sequence[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
    processor=None,
) -> torch.Tensor:
    """Embed visual items with `embed_visual` (the model's image or video features), whatever form they come in:

    - a store and the `visual_ids` to look up (see `visual_inputs`): precomputed features
      ``(N, D)``, frame features ``(N, T, D)`` with their mask, or image files / frame files read
      as ``pixel_values``;
    - in-memory images (PIL images or ``(H, W, C)`` arrays) or videos (lists of frames), with
      `processor` (a `CL2CMProcessor`) making the ``pixel_values``; `visual_ids` stays None.
    """
    is_store = hasattr(source, "lookup")
    if is_store == (visual_ids is None):
        raise CL2CMError("encode_visual: pass a store with visual_ids, or in-memory images/videos without them")
    items = visual_ids if is_store else list(source)
    if not is_store and processor is None:
        raise CL2CMError("encode_visual: in-memory images need a processor with an image processor")
    chunks = []
    for start in tqdm(range(0, len(items), batch_size), desc="encode visual", disable=not progress):
        chunk = items[start : start + batch_size]
        if is_store:
            inputs = visual_inputs(source, chunk, processor)
        else:
            frames = isinstance(chunk[0], (list, tuple))
            inputs = processor(videos=chunk) if frames else processor(images=chunk)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        chunks.append(embed_visual(model, **inputs).float().cpu())
    return torch.cat(chunks)


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
            raise CL2CMError(f"{name} is not a checkpoint: no such folder")
        return path
    return Path(snapshot_download(str(name)))


def check_folder(folder: Path, model_type: str, name: str | Path | None = None) -> None:
    """Raise `ValueError` naming the file unless `folder` is a checkpoint of `model_type` that may be
    loaded: config.json, auto_map, tokenizer files and processor sizes (see the module doc)."""
    name = folder if name is None else name
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CL2CMError(f"{name} is not a checkpoint: it has no config.json")
    found = read_json_object(config_path).get("model_type")
    if found != model_type:
        raise CL2CMError(f"{name} is a {found!r} checkpoint; expected a {model_type!r} one")
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
