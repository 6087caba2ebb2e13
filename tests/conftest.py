"""Shared fixtures: tiny random towers, a tiny WordPiece tokenizer, the ../shared location."""

from pathlib import Path

import pytest
import torch

# ../shared lies beside the repository in development and CI, never inside it.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MBERT_DIR = SHARED / "tokenizers" / "bert-base-multilingual-cased"

requires_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason="../shared is absent (it is only beside the repository in development and CI)",
)

TINY_VOCAB = 1000
PROJECTION_DIM = 16
FEATURE_DIM = 48
IMAGE_SIZE = 16


def tiny_bert_config(vocab_size: int = TINY_VOCAB):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def tiny_clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=16,
    )


def cross_lingual_config(**kwargs):
    from cl2cm_hf import CL2CMCrossLingualConfig

    kwargs.setdefault("projection_dim", PROJECTION_DIM)
    return CL2CMCrossLingualConfig(text_config=tiny_bert_config().to_dict(), **kwargs)


def features_config(**kwargs):
    from cl2cm_hf import CL2CMCrossModalConfig

    kwargs.setdefault("projection_dim", PROJECTION_DIM)
    kwargs.setdefault("visual_hidden_size", 32)
    kwargs.setdefault("visual_num_heads", 2)
    kwargs.setdefault("visual_max_frames", 8)
    kwargs.setdefault("visual_encoder_type", "features")
    kwargs.setdefault("visual_feature_dim", FEATURE_DIM)
    return CL2CMCrossModalConfig(text_config=tiny_bert_config().to_dict(), **kwargs)


def save_features_world(root: Path, rows: int, text_prefix: str = "") -> Path:
    """`root/model`: a features checkpoint (random weights, seed 0) with its processor; `root/store`:
    `rows` random feature rows with ids item000, item001, ... Returns `root`."""
    from cl2cm_hf import CL2CMCrossModalModel, build_processor
    from cl2cm_hf.data import VisualFeatureStore

    torch.manual_seed(0)
    CL2CMCrossModalModel(features_config(text_prefix=text_prefix)).save_pretrained(root / "model")
    build_processor(build_wordpiece_tokenizer(), text_prefix).save_pretrained(root / "model")
    ids = [f"item{i:03d}" for i in range(rows)]
    VisualFeatureStore.from_arrays(ids, torch.randn(rows, features_config().visual_feature_dim)).save(root / "store")
    return root


def backbone_config(**kwargs):
    from cl2cm_hf import CL2CMCrossModalConfig

    kwargs.setdefault("projection_dim", PROJECTION_DIM)
    kwargs.setdefault("visual_num_heads", 2)
    kwargs.setdefault("visual_max_frames", 8)
    return CL2CMCrossModalConfig(
        text_config=tiny_bert_config().to_dict(),
        visual_encoder_type="backbone",
        vision_config=tiny_clip_vision_config().to_dict(),
        **kwargs,
    )


def text_batch(batch: int = 3, length: int = 7, vocab: int = TINY_VOCAB, seed: int = 0):
    """Random ids with ragged lengths (first row full, others padded with 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        keep = max(1, length - i * 2)
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask


def frame_mask(lengths, frames: int):
    return (torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]).long()


def build_wordpiece_tokenizer(words=None):
    """A tiny WordPiece BERT-style PreTrainedTokenizerFast built with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = words or (
        "a man woman dog cat plays guitar on the street with red blue ball runs in park "
        "ein mann frau hund spielt gitarre auf der strasse un homme joue de la"
    ).split()
    pieces = ["##s", "##e", "##n"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words)) + pieces)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture
def text_config():
    return tiny_bert_config()


@pytest.fixture
def vision_config():
    return tiny_clip_vision_config()


@pytest.fixture
def wordpiece_tokenizer():
    return build_wordpiece_tokenizer()
