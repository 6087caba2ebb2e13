"""A small tokenizer trained on the fly with the `tokenizers` library (demo world, tests).

BERT-style special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``; the post-processor wraps every text
as ``[CLS] text [SEP]`` (pairs: ``[CLS] a [SEP] b [SEP]``) for both kinds: WordPiece (BERT
pre-tokenizer) or byte-level BPE. Lowercased, accents and umlauts kept (NFC), so German and French
words stay distinct. Saved with ``save_pretrained`` and reloaded with
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cl2cm_hf.errors import CL2CMError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Letters of en/de/fr (and digits): WordPiece gets every one as a word start and as a "##" piece,
# so an unseen word such as "größer" is split into pieces instead of becoming [UNK].
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789äöüßàâæçéèêëîïôœùûüÿ"


def _wordpiece_vocab(tokenizer: Tokenizer, texts: list[str], vocab_size: int, min_frequency: int) -> dict[str, int]:
    """Specials, every character as a word start and as a ``##`` piece, then the most frequent words
    (ties broken alphabetically). Counting with the tokenizer's own normalizer and pre-tokenizer.

    The library's WordPieceTrainer breaks frequency ties in hash-map order, so its vocabulary
    changes between runs of the same seed; this one is a pure function of the texts."""
    counts = Counter(
        word
        for text in texts
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
    )
    characters = sorted(set(ALPHABET) | {c for word in counts for c in word})
    pieces = list(SPECIAL_TOKENS) + characters + [f"##{c}" for c in characters]
    budget = max(0, vocab_size - len(pieces))
    known = set(pieces)
    words = [w for w, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= min_frequency and w not in known]
    return {token: i for i, token in enumerate(pieces + words[:budget])}


def train_demo_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, kind: str = "wordpiece", model_max_length: int = 128, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a WordPiece (``kind="wordpiece"``, reproducible: see `_wordpiece_vocab`) or byte-level
    BPE (``"bpe"``, the library's trainer) tokenizer on `texts`.

    Returns a fast tokenizer producing ``input_ids`` and ``attention_mask`` (no token type ids).
    """
    texts = list(texts)
    if not texts:
        raise CL2CMError("train_demo_tokenizer needs at least one text")
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        tokenizer.model = models.WordPiece(vocab=_wordpiece_vocab(tokenizer, texts, vocab_size, min_frequency), unk_token="[UNK]")
    elif kind == "bpe":  # byte-level: every string is covered, no [UNK]
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
    else:
        raise CL2CMError(f"kind={kind!r}; expected 'wordpiece' or 'bpe'")
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
