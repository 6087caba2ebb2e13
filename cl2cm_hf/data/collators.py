"""Batch collators for Trainer / DataLoader: lists of row dicts in, dicts of tensors out.

Use with ``TrainingArguments(remove_unused_columns=False, label_names=[])``: the collators read
``visual_id``/text columns that the models' ``forward`` does not take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

TEACHER_COLUMNS = ("teacher_source_embeds", "teacher_target_embeds")
_TOKENIZER_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(tokenizer, texts: Sequence[str], max_length: int, text_prefix: str = "") -> dict[str, torch.Tensor]:
    """Pad/truncate `texts` (each prefixed) to tensors; ``token_type_ids`` only if the tokenizer makes them."""
    encoded = tokenizer(
        [text_prefix + text for text in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {key: encoded[key] for key in _TOKENIZER_KEYS if key in encoded}


def visual_batch(store, visual_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{store.output_key: (B, D)|(B, T, D)|pixels, "visual_mask": (B, T)}`` (mask only for video)."""
    values, mask = store.lookup(list(visual_ids))
    batch = {store.output_key: values}
    if mask is not None:
        batch["visual_mask"] = mask
    return batch


def _column(rows: Sequence[Mapping], name: str) -> list:
    try:
        return [row[name] for row in rows]
    except KeyError:
        raise KeyError(f"batch rows lack column {name!r} (row columns: {sorted(rows[0])})") from None


class PairCollator:
    """Translated pairs -> ``source_*``/``target_*`` token tensors, plus, with a feature store,
    ``visual_features`` (or ``pixel_values``) and ``visual_mask`` (video only), plus
    ``teacher_source_embeds``/``teacher_target_embeds`` float tensors when the rows carry them."""

    def __init__(self, tokenizer, feature_store=None, max_length: int = 64, text_prefix: str = ""):
        self.tokenizer = tokenizer
        self.feature_store = feature_store
        self.max_length = max_length
        self.text_prefix = text_prefix

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("PairCollator got an empty batch")
        batch: dict[str, torch.Tensor] = {}
        for side in ("source", "target"):
            encoded = tokenize(self.tokenizer, _column(rows, f"{side}_text"), self.max_length, self.text_prefix)
            batch.update({f"{side}_{key}": value for key, value in encoded.items()})
        if self.feature_store is not None:
            batch.update(visual_batch(self.feature_store, _column(rows, "visual_id")))
        for name in TEACHER_COLUMNS:
            if name in rows[0]:
                batch[name] = torch.as_tensor(_column(rows, name), dtype=torch.float32)
        return batch


class TextCollator:
    """Query rows (or plain strings) -> ``input_ids``, ``attention_mask`` (+ ``token_type_ids``)."""

    def __init__(self, tokenizer, max_length: int = 64, text_prefix: str = "", text_column: str = "text"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_prefix = text_prefix
        self.text_column = text_column

    def __call__(self, rows: Sequence[Mapping | str]) -> dict[str, torch.Tensor]:
        texts = [row if isinstance(row, str) else row[self.text_column] for row in rows]
        return tokenize(self.tokenizer, texts, self.max_length, self.text_prefix)


class VisualCollator:
    """Rows with ``visual_id`` (or plain ids) -> the store's features (the gallery side of evaluation)."""

    def __init__(self, feature_store):
        self.feature_store = feature_store

    def __call__(self, rows: Sequence[Mapping | str]) -> dict[str, torch.Tensor]:
        ids = [row if isinstance(row, str) else row["visual_id"] for row in rows]
        return visual_batch(self.feature_store, ids)
