"""Batch collators for Trainer / DataLoader: lists of row dicts in, dicts of tensors out.

Use with ``TrainingArguments(remove_unused_columns=False, label_names=[])``: the collators read
``visual_id``/text columns that the models' ``forward`` does not take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.inference import as_processor, tokenize, visual_inputs

TEACHER_COLUMNS = ("teacher_source_embeds", "teacher_target_embeds")


def _column(rows: Sequence[Mapping], name: str) -> list:
    try:
        return [row[name] for row in rows]
    except KeyError:
        raise KeyError(f"batch rows lack column {name!r} (row columns: {sorted(rows[0])})") from None


class PairCollator:
    """Translated pairs -> ``source_*``/``target_*`` token tensors, plus, with a feature store,
    ``visual_features`` (or ``pixel_values``) and ``visual_mask`` (video only), plus
    ``teacher_source_embeds``/``teacher_target_embeds`` float tensors when the rows carry them.

    `tokenizer`: a CL2CM processor, or a tokenizer that is wrapped in one with `text_prefix`.
    `teacher_processor`: the stage-1 teacher's own processor when it tokenizes differently from the
    run's (`load_teacher`); the texts are then tokenized for it too, as ``teacher_source_*`` and
    ``teacher_target_*``."""

    def __init__(self, tokenizer, feature_store=None, max_length: int = 64, text_prefix: str = "", teacher_processor=None):
        self.processor = as_processor(tokenizer, text_prefix)
        self.feature_store = feature_store
        self.max_length = max_length
        self.teacher_processor = teacher_processor

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not rows:
            raise CL2CMError("PairCollator got an empty batch")
        batch: dict[str, torch.Tensor] = {}
        for side in ("source", "target"):
            encoded = tokenize(self.processor, _column(rows, f"{side}_text"), self.max_length)
            batch.update({f"{side}_{key}": value for key, value in encoded.items()})
            if self.teacher_processor is not None:
                encoded = tokenize(self.teacher_processor, _column(rows, f"{side}_text"), self.max_length)
                batch.update({f"teacher_{side}_{key}": value for key, value in encoded.items()})
        if self.feature_store is not None:
            batch.update(visual_inputs(self.feature_store, _column(rows, "visual_id"), self.processor))
        for name in TEACHER_COLUMNS:
            if name in rows[0]:
                batch[name] = torch.as_tensor(_column(rows, name), dtype=torch.float32)
        return batch


class TextCollator:
    """Query rows (or plain strings) -> ``input_ids``, ``attention_mask`` (+ ``token_type_ids``)."""

    def __init__(self, tokenizer, max_length: int = 64, text_prefix: str = "", text_column: str = "text"):
        self.processor = as_processor(tokenizer, text_prefix)
        self.max_length = max_length
        self.text_column = text_column

    def __call__(self, rows: Sequence[Mapping | str]) -> dict[str, torch.Tensor]:
        texts = [row if isinstance(row, str) else row[self.text_column] for row in rows]
        return tokenize(self.processor, texts, self.max_length)


class VisualCollator:
    """Rows with ``visual_id`` (or plain ids) -> the store's features or pixels (the gallery side of
    evaluation); `processor`: a CL2CM processor whose image processor decodes an image store."""

    def __init__(self, feature_store, processor=None):
        self.feature_store = feature_store
        self.processor = processor

    def __call__(self, rows: Sequence[Mapping | str]) -> dict[str, torch.Tensor]:
        ids = [row if isinstance(row, str) else row["visual_id"] for row in rows]
        return visual_inputs(self.feature_store, ids, self.processor)
