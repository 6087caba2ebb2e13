"""Batch encoding for evaluation and search: texts (length-sorted batches) and visual items."""

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays short (longest first,
    which also surfaces out-of-memory errors at the start)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def encode_texts(
    encode: Callable[..., torch.Tensor],
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    max_length: int = 64,
    text_prefix: str = "",
    device: torch.device | str | None = None,
    sort_by_length: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Embed `texts` with `encode(input_ids=..., attention_mask=...)` (e.g. a model's
    `get_text_features`) and return `(len(texts), d)` in the input order.

    With `sort_by_length`, texts are tokenized once, batched by length and padded per batch only as
    far as the batch needs; the rows are put back in input order."""
    if len(texts) == 0:
        raise ValueError("encode_texts got no texts")
    prefixed = [text_prefix + t for t in texts]
    encoded = tokenizer(prefixed, truncation=True, max_length=max_length)["input_ids"]
    if sort_by_length:
        batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    else:
        batches = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
    pad_kwargs = {} if sort_by_length else {"padding": "max_length", "max_length": max_length}
    out = None
    for batch in tqdm(batches, desc="encode texts", disable=not progress):
        features = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt", **pad_kwargs)
        features = {k: v.to(device) for k, v in features.items() if k in ("input_ids", "attention_mask")}
        embeds = encode(**features).float().cpu()
        if out is None:
            out = torch.empty(len(texts), embeds.shape[1])
        out[torch.tensor(batch)] = embeds
    return out


@torch.no_grad()
def encode_visual(
    model,
    feature_store,
    visual_ids: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Embed visual items, looked up by id in a feature store, with `model.get_visual_features`."""
    chunks = []
    for start in tqdm(range(0, len(visual_ids), batch_size), desc="encode visual", disable=not progress):
        features, mask = feature_store.lookup(visual_ids[start : start + batch_size])
        mask = None if mask is None else mask.to(device)
        chunks.append(model.get_visual_features(visual_features=features.to(device), visual_mask=mask).float().cpu())
    return torch.cat(chunks)
