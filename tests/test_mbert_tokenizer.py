"""The real mBERT (cased) tokenizer from ../shared on German, French and Czech captions, feeding a
cross-lingual model with mBERT's vocabulary (tiny hidden size)."""

import pytest
import torch
from conftest import MBERT_DIR, requires_shared

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

pytestmark = requires_shared

MBERT_VOCAB = 119547
CAPTIONS = {
    "en": ["A man plays the guitar on the street.", "Two dogs run through the snow."],
    "de": ["Ein Mann spielt Gitarre auf der Straße.", "Zwei Hunde laufen durch den Schnee."],
    "fr": ["Un homme joue de la guitare dans la rue.", "Deux chiens courent dans la neige, près d'un café."],
    "cs": ["Muž hraje na kytaru na ulici.", "Dva psi běží sněhem. Žluťoučký kůň úpěl ďábelské ódy."],
}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        tokenizer_file=str(MBERT_DIR / "tokenizer.json"),
        vocab_file=str(MBERT_DIR / "vocab.txt"),
        do_lower_case=False,
    )


@pytest.fixture(scope="module")
def mbert_text_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=MBERT_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ).to_dict()


def test_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == MBERT_VOCAB
    assert tokenizer.convert_ids_to_tokens([0, 100, 101, 102, 103]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.pad_token_id == 0


@pytest.mark.parametrize("lang", ["de", "fr", "cs"])
def test_tokenizes_target_language_captions(tokenizer, lang):
    enc = tokenizer(CAPTIONS[lang], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == len(CAPTIONS[lang])
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert (ids < MBERT_VOCAB).all()
    assert not (ids == tokenizer.unk_token_id).any(), "accented letters must not become [UNK]"
    for row, text in zip(ids, CAPTIONS[lang]):
        # cased, accents kept: decoding gives the caption back (ignoring spacing around punctuation)
        decoded = tokenizer.decode(row, skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.replace(" ", "")


def test_cased_and_accent_preserving(tokenizer):
    assert tokenizer("Hund")["input_ids"] != tokenizer("hund")["input_ids"]
    assert "Straße" in tokenizer.tokenize("Ein Mann auf der Straße")
    cz = tokenizer.tokenize("Muž hraje na kytaru")
    assert "".join(t.removeprefix("##") for t in cz[:2]) == "Muž"
    assert "ž" not in "".join(tokenizer.tokenize("Muz"))


def test_cross_lingual_model_embeds_mbert_tokens(tokenizer, mbert_text_config):
    torch.manual_seed(0)
    model = CL2CMCrossLingualModel(CL2CMCrossLingualConfig(text_config=mbert_text_config, projection_dim=16)).eval()
    assert model.text_model.backbone.embeddings.word_embeddings.num_embeddings == MBERT_VOCAB
    source = tokenizer(CAPTIONS["en"], padding=True, return_tensors="pt")
    embeds = {}
    with torch.no_grad():
        for lang in ("de", "fr", "cs"):
            target = tokenizer(CAPTIONS[lang], padding=True, return_tensors="pt")
            out = model(
                source_input_ids=source["input_ids"],
                source_attention_mask=source["attention_mask"],
                source_token_type_ids=source["token_type_ids"],
                target_input_ids=target["input_ids"],
                target_attention_mask=target["attention_mask"],
                target_token_type_ids=target["token_type_ids"],
                return_loss=True,
            )
            assert out.target_embeds.shape == (2, 16) and torch.isfinite(out.target_embeds).all()
            torch.testing.assert_close(out.target_embeds.norm(dim=-1), torch.ones(2))
            assert out.target_token_embeds.shape == (*target["input_ids"].shape, 16)
            assert torch.equal(out.target_token_mask, target["attention_mask"])
            assert torch.isfinite(out.loss)
            embeds[lang] = model.get_text_features(**target, language="target").pooler_output
            torch.testing.assert_close(embeds[lang], out.target_embeds)
    assert not torch.allclose(embeds["de"], embeds["fr"])
    assert not torch.allclose(embeds["de"], embeds["cs"])


def test_cross_modal_model_with_mbert_and_saved_tokenizer(tokenizer, mbert_text_config, tmp_path):
    """The tokenizer saved next to a checkpoint reloads with AutoTokenizer and gives the same ids."""
    from transformers import AutoTokenizer

    model = CL2CMCrossModalModel(
        CL2CMCrossModalConfig(text_config=mbert_text_config, visual_feature_dim=24, visual_hidden_size=16, projection_dim=8)
    ).eval()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    batch = CAPTIONS["de"] + CAPTIONS["fr"] + CAPTIONS["cs"]
    enc, enc2 = tokenizer(batch, padding=True, return_tensors="pt"), reloaded(batch, padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        q = model.get_text_features(**enc).pooler_output
        v = model.get_image_features(visual_features=torch.randn(4, 24)).pooler_output
    assert q.shape == (6, 8) and torch.isfinite(q).all()
    assert (q @ v.T).shape == (6, 4)
