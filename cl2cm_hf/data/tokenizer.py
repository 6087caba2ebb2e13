"""A small tokenizer trained on the fly with the `tokenizers` library (demo world, tests).

BERT-style special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``; the post-processor wraps every text
as ``[CLS] text [SEP]`` (pairs: ``[CLS] a [SEP] b [SEP]``) for both kinds: WordPiece (BERT
pre-tokenizer) or byte-level BPE. Lowercased, accents and umlauts kept (NFC), so German and French
words stay distinct. Saved with ``save_pretrained`` and reloaded with
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Letters of en/de/fr (and digits): WordPiece gets every one as a word start and as a "##" piece,
# so an unseen word such as "größer" is split into pieces instead of becoming [UNK].
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789äöüßàâæçéèêëîïôœùûüÿ"


def _alphabet_texts() -> list[str]:
    return [" ".join(ALPHABET), " ".join("a" + c for c in ALPHABET)]


def train_demo_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, kind: str = "wordpiece", model_max_length: int = 128, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a WordPiece (``kind="wordpiece"``) or BPE (``"bpe"``) tokenizer on `texts`.

    Returns a fast tokenizer producing ``input_ids`` and ``attention_mask`` (no token type ids).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_demo_tokenizer needs at least one text")
    special = list(SPECIAL_TOKENS)
    tokenizer_normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=min_frequency)
    elif kind == "bpe":  # byte-level: every string is covered, no [UNK]
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ValueError(f"kind={kind!r}; expected 'wordpiece' or 'bpe'")
    tokenizer.normalizer = tokenizer_normalizer
    tokenizer.train_from_iterator(texts + (_alphabet_texts() if kind == "wordpiece" else []), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )
