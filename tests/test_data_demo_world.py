"""The built-in demo world: determinism, grammar agreement, splits, video frames, MT noise,
learnability, and the on-the-fly tokenizer."""

import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from cl2cm_hf.data import build_demo_world, train_demo_tokenizer
from cl2cm_hf.data.demo_grammar import Clause, detokenize, realize_de_human, realize_de_mt, realize_en, realize_fr_human, realize_fr_mt
from cl2cm_hf.data.demo_lexicon import lexicon_words
from cl2cm_hf.data.demo_scenes import DemoObject, Scene, SceneEncoder, video_schedule

SMALL = dict(num_items=60, val_items=20, test_items=20, corpus_items=10)
HUMAN_MARKERS = ("Bild", "sieht man", "Foto", "befindet", "Außerdem", "Zu sehen", "gerade",
                 "Il y a", "photo", "On voit", "se trouve", "De plus", "aperçoit", "qui")


@pytest.fixture(scope="module")
def world():
    return build_demo_world(seed=3, num_items=600, val_items=60, test_items=200, corpus_items=100)


def rows(world_):
    return {name: split[:] for name, split in {**world_.pairs, **{f"q_{k}": v for k, v in world_.queries.items()}}.items()}


def test_deterministic_by_seed():
    a, b, c = build_demo_world(seed=7, **SMALL), build_demo_world(seed=7, **SMALL), build_demo_world(seed=8, **SMALL)
    assert rows(a) == rows(b)
    assert np.array_equal(a.features.lookup(a.features.ids)[0], b.features.lookup(b.features.ids)[0])
    assert rows(a)["train"]["source_text"] != rows(c)["train"]["source_text"]
    assert not np.allclose(a.features.lookup(a.features.ids)[0], c.features.lookup(c.features.ids)[0])


def test_backbone_is_fixed_across_world_seeds():
    encoder = SceneEncoder(16)
    for seed in (0, 5):
        w = build_demo_world(seed=seed, feature_dim=16, feature_noise=0.0, **SMALL)
        ids = w.splits["test"][:5]
        expected = encoder(np.stack([encoder.code(w.scenes[i]) for i in ids]))
        assert np.allclose(w.features.lookup(ids)[0].numpy(), expected, atol=1e-5)


def test_sizes_splits_and_languages(world):
    assert {k: len(v) for k, v in world.splits.items()} == {"train": 600, "validation": 60, "test": 200}
    ids = {k: set(v) for k, v in world.splits.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    assert len({s.key() for s in world.scenes.values()}) == len(world.scenes)  # no two identical items
    for split, pairs in world.pairs.items():
        assert set(pairs["visual_id"]) == ids[split] and len(pairs) == len(ids[split]) * 2 * 2  # 2 captions x (de, fr)
        assert set(pairs["target_lang"]) == {"de", "fr"}
    for split, queries in world.queries.items():
        assert set(queries["visual_id"]) == ids[split] and set(queries["lang"]) == {"en", "de", "fr"}
    assert set(world.features.ids) == set(world.scenes) and world.features.feature_dim == 128


DOG_HOUSE_CAT = Scene(
    (DemoObject("dog", "red", "big"), DemoObject("house", "blue", "small"), DemoObject("cat", "white", "small", "sitting")),
    ((0, "next to", 1), (2, "on", 1)),
)


def test_agreement_in_literal_translations():
    plan = ([Clause(0, "next to", 1), Clause(2, "on", 1, other_definite=True)], (True, True, True))
    assert realize_en(DOG_HOUSE_CAT, plan) == "A big red dog next to a small blue house, and a small white cat is sitting on the house"
    assert detokenize(realize_de_mt(DOG_HOUSE_CAT, plan)) == (
        "Ein großer roter Hund neben einem kleinen blauen Haus, und eine kleine weiße Katze sitzt auf dem Haus")
    assert detokenize(realize_fr_mt(DOG_HOUSE_CAT, plan)) == (
        "Un grand chien rouge à côté d'une petite maison bleue, et un petit chat blanc est assis sur la maison")
    car_book_tree = Scene((DemoObject("car", "blue", "small"), DemoObject("book", "white"), DemoObject("cow", "green", None, "sitting")),
                          ((0, "next to", 1), (2, "behind", 1)))
    plan = ([Clause(0, "next to", 1), Clause(2, "behind", 1, other_definite=True)], (True, False, False))
    assert detokenize(realize_de_mt(car_book_tree, plan)) == (
        "Ein kleines blaues Auto neben einem weißen Buch, und eine grüne Kuh sitzt hinter dem Buch")
    assert detokenize(realize_fr_mt(car_book_tree, plan)) == (
        "Une petite voiture bleue à côté d'un livre blanc, et une vache verte est assise derrière le livre")
    tree = Scene((DemoObject("cup", "yellow"), DemoObject("tree", "black")), ((0, "next to", 1),))
    assert detokenize(realize_fr_mt(tree, ([Clause(0, "next to", 1, True)], (False, False)))) == "Une tasse jaune à côté de l'arbre"
    assert detokenize(realize_fr_mt(tree, ([Clause(1, "next to", 0, True)], (False, False)))) == "Un arbre noir à côté de la tasse"


def test_human_templates_agree_and_differ_from_mt():
    de = {realize_de_human(DOG_HOUSE_CAT, np.random.default_rng(s)) for s in range(100)}
    fr = {realize_fr_human(DOG_HOUSE_CAT, np.random.default_rng(s)) for s in range(100)}
    assert "Auf dem Bild sieht man einen großen roten Hund, der sich neben einem kleinen blauen Haus befindet. " \
           "Außerdem sitzt eine kleine weiße Katze auf dem Haus." in de
    assert "Neben einem kleinen blauen Haus befindet sich ein großer roter Hund. Außerdem sitzt eine kleine weiße Katze auf dem Haus." in de
    assert "Il y a un grand chien rouge à côté d'une petite maison bleue sur la photo. " \
           "De plus, un petit chat blanc est assis sur la maison." in fr
    assert "À côté d'une petite maison bleue se trouve un grand chien rouge. De plus, un petit chat blanc est assis sur la maison." in fr


def test_queries_use_templates_the_mt_side_never_uses(world):
    targets = set(world.pairs["train"]["target_text"])
    assert not any(marker in text for marker in HUMAN_MARKERS for text in targets)
    human = world.queries["test"].filter(lambda r: r["lang"] != "en")["text"]
    assert not set(human) & targets and all(text.endswith(".") for text in human)
    # German articles agree with the noun in every accusative "sieht man" phrase
    for match in re.finditer(r"sieht man (\w+) (?:\w+ )*?(Hund|Katze|Auto)\b", " ".join(human)):
        assert match.group(1) == {"Hund": "einen", "Katze": "eine", "Auto": "ein"}[match.group(2)], match.group(0)


def test_mt_noise_rate_and_kinds():
    clean = build_demo_world(seed=1, mt_noise=0.0, **SMALL)
    noisy = build_demo_world(seed=1, mt_noise=0.3, **SMALL)
    assert clean.stats["mt_corrupted"] == 0
    assert clean.pairs["train"]["source_text"][:] == noisy.pairs["train"]["source_text"][:]  # same captions, noisier targets
    changed = np.mean([a != b for a, b in zip(clean.pairs["train"]["target_text"], noisy.pairs["train"]["target_text"])])
    assert 0.15 < changed < 0.45
    big = build_demo_world(seed=1, mt_noise=1.0, num_items=200, val_items=10, test_items=10, corpus_items=0)
    assert set(big.stats["mt_edits"]) == {"drop", "replace", "agreement", "reorder", "untranslated"}


def test_video_variant_frames_objects_enter_and_leave():
    w = build_demo_world(seed=2, visual_kind="video", feature_dim=32, **SMALL)
    lengths = w.features.lengths
    assert w.features.is_video and lengths.min() >= 4 and lengths.max() <= 12 and len(set(lengths.tolist())) > 3
    features, mask = w.features.lookup(w.splits["train"][:8])
    assert features.shape[:2] == mask.shape and mask.sum(1).tolist() == lengths[:8].tolist()
    rng = np.random.default_rng(0)
    for scene in list(w.scenes.values())[:40]:
        for frames in (4, 9):
            present = video_schedule(scene, frames, rng)
            every = set(range(len(scene.objects)))
            assert set().union(*present) == every  # every object is seen at some time
            if len(every) > 1:
                assert all(p != every for p in (present[0], present[-1]))
                assert len(every) == 2 or every not in present  # with three objects, never all in one frame


def bag_of_words(texts, vocab):
    x = np.zeros((len(texts), len(vocab) + 1))
    x[:, -1] = 1.0
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            if word in vocab:
                x[i, vocab[word]] += 1
    return x


def ridge_recall(world_, shuffle):
    train = world_.pairs["train"].filter(lambda r: r["target_lang"] == "de")
    texts, ids = list(train["source_text"]), list(train["visual_id"])
    if shuffle:
        ids = list(np.random.default_rng(0).permutation(ids))
    vocab = {w: i for i, w in enumerate(sorted({w for t in texts for w in re.findall(r"\w+", t.lower())}))}
    x, y = bag_of_words(texts, vocab), world_.features.lookup(ids)[0].numpy()
    weights = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
    queries = world_.queries["test"].filter(lambda r: r["lang"] == "en")
    gallery = world_.splits["test"]
    pred = bag_of_words(list(queries["text"]), vocab) @ weights
    feats = world_.features.lookup(gallery)[0].numpy()
    scores = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ (feats / np.linalg.norm(feats, axis=1, keepdims=True)).T
    target = np.array([gallery.index(v) for v in queries["visual_id"]])
    ranks = (scores > scores[np.arange(len(target)), target][:, None]).sum(1)
    return float(np.mean(ranks < 10))


def test_world_is_learnable_and_shuffled_pairs_are_chance(world):
    chance = 10 / len(world.splits["test"])  # R@10 of a random ranking: 0.05
    assert ridge_recall(world, shuffle=False) > 0.6
    assert ridge_recall(world, shuffle=True) < 3 * chance


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_demo_tokenizer_covers_all_languages_and_reloads(world, tmp_path, kind):
    tokenizer = train_demo_tokenizer(world.tokenizer_corpus(), vocab_size=1500, kind=kind)
    assert not [w for w in lexicon_words() if tokenizer.unk_token_id in tokenizer(w)["input_ids"]]
    encoded = tokenizer("Neben dem großen Baum", "à côté de l'arbre")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and "token_type_ids" not in encoded
    assert tokenizer.decode(tokenizer("Größer à côté")["input_ids"], skip_special_tokens=True).strip() == "größer à côté"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("eine kleine Katze")["input_ids"] == tokenizer("eine kleine Katze")["input_ids"]
    assert reloaded.pad_token == "[PAD]" and reloaded.mask_token == "[MASK]"
