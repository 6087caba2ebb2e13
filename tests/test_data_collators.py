"""Collators: tensor names, shapes and dtypes for pairs, queries and the visual gallery."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from cl2cm_hf.data import PairCollator, TextCollator, VisualCollator, VisualFeatureStore, make_pairs, train_demo_tokenizer

TEXTS = ["a big red dog next to a small car", "ein großer roter Hund neben einem kleinen Auto", "un grand chien rouge"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_demo_tokenizer(TEXTS * 3, vocab_size=200)


def pair_rows(n=3, teacher=False):
    rows = [{"visual_id": f"v{i}", "source_text": TEXTS[0][: 10 + 5 * i], "target_text": TEXTS[1], "target_lang": "de"} for i in range(n)]
    if teacher:
        for i, row in enumerate(rows):
            row["teacher_source_embeds"] = [float(i)] * 4
            row["teacher_target_embeds"] = [float(-i)] * 4
    return rows


def test_pair_collator_text_only(tokenizer):
    batch = PairCollator(tokenizer, max_length=8)(pair_rows())
    assert set(batch) == {"source_input_ids", "source_attention_mask", "target_input_ids", "target_attention_mask"}
    assert batch["source_input_ids"].shape[0] == 3 and batch["target_input_ids"].shape == (3, 8)  # truncated to max_length
    assert batch["source_input_ids"][0, 0].item() == tokenizer.cls_token_id
    assert batch["source_attention_mask"].dtype == torch.long


def test_pair_collator_token_type_ids_only_if_tokenizer_makes_them(tokenizer):
    with_types = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="[PAD]",
                                         model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    batch = PairCollator(with_types)(pair_rows())
    assert batch["source_token_type_ids"].shape == batch["source_input_ids"].shape
    assert "target_token_type_ids" in batch


def test_pair_collator_features_teacher_and_prefix(tokenizer):
    store = VisualFeatureStore.from_arrays([f"v{i}" for i in range(3)], np.eye(3, 5, dtype=np.float32))
    collator = PairCollator(tokenizer, store, text_prefix="query: ")
    batch = collator(pair_rows(teacher=True))
    assert batch["visual_features"].shape == (3, 5) and "visual_mask" not in batch
    assert batch["teacher_source_embeds"].dtype == torch.float32 and batch["teacher_target_embeds"].shape == (3, 4)
    assert batch["teacher_target_embeds"][2, 0].item() == -2.0
    plain = PairCollator(tokenizer, store)(pair_rows())
    assert batch["source_input_ids"].shape[1] > plain["source_input_ids"].shape[1]  # the prefix was tokenized


def test_pair_collator_video_store_through_dataloader(tokenizer):
    lengths = np.array([2, 4, 1])
    store = VisualFeatureStore.from_arrays(["v0", "v1", "v2"], np.ones((3, 6, 5), dtype=np.float32), lengths)
    pairs = make_pairs({k: [r[k] for r in pair_rows()] for k in pair_rows()[0]})
    loader = DataLoader(pairs, batch_size=2, collate_fn=PairCollator(tokenizer, store))
    first, second = list(loader)
    assert first["visual_features"].shape == (2, 4, 5) and first["visual_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert second["visual_mask"].tolist() == [[1]]


def test_pair_collator_missing_visual_id(tokenizer):
    store = VisualFeatureStore.from_arrays(["v0"], np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(KeyError, match=r"visual_id 'v1' is not in in-memory feature store \(1 items\)"):
        PairCollator(tokenizer, store)(pair_rows(2))


def test_text_and_visual_collators(tokenizer):
    batch = TextCollator(tokenizer, max_length=6)([{"visual_id": "v0", "text": TEXTS[1], "lang": "de"}, {"visual_id": "v1", "text": "hund", "lang": "de"}])
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    assert TextCollator(tokenizer)(["hund"])["input_ids"].shape == (1, 3)
    store = VisualFeatureStore.from_arrays(["v0", "v1"], np.zeros((2, 3, 4), dtype=np.float32), [1, 3])
    gallery = VisualCollator(store)(["v1", {"visual_id": "v0"}])
    assert gallery["visual_features"].shape == (2, 3, 4) and gallery["visual_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
