"""Semantic MT errors and the harder (confusable) demo world: the asked rate, only the MT side
changed, deterministic by seed, and the defaults leave today's world bit-identical."""

import hashlib
import itertools
import json

import numpy as np
import pytest

from cl2cm_hf.data import build_demo_world
from cl2cm_hf.data.demo_grammar import plan_caption
from cl2cm_hf.data.demo_lexicon import NOUNS
from cl2cm_hf.data.demo_mt_noise import semantic_error
from cl2cm_hf.data.demo_scenes import confusable_variant, sample_scene
from cl2cm_hf.training.data_sources import build_run_data
from cl2cm_hf.training.recipe import load_config, parse_config

SMALL = {"seed": 5, "num_items": 80, "val_items": 20, "test_items": 20, "corpus_items": 10}
# sha256 of SMALL's pairs, queries, scenes and corpus, computed with the code before these settings existed
# (commit 41e5ff0): the defaults must keep every existing world, result and test as it was.
BEFORE_SHA256 = "94059f9b05975e0964238793b51fe5f62005961f1ac433eadf88342ff5bff328"


def world_sha256(world) -> str:
    text = json.dumps({"pairs": {k: v[:] for k, v in world.pairs.items()}, "queries": {k: v[:] for k, v in world.queries.items()},
                       "scenes": repr(list(world.scenes.items())), "corpus": world.corpus}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(a, b) -> list[tuple]:
    """(attribute, object index) of every difference between two scenes of the same shape, relations as ("relation", k)."""
    out = [(name, i) for i, (x, y) in enumerate(zip(a.objects, b.objects)) for name in ("noun", "colour", "size", "action")
           if getattr(x, name) != getattr(y, name)]
    return out + [("relation", k) for k, (x, y) in enumerate(zip(a.relations, b.relations)) if x != y]


def test_defaults_leave_the_world_bit_identical():
    assert world_sha256(build_demo_world(**SMALL)) == BEFORE_SHA256
    explicit = build_demo_world(**SMALL, mt_semantic_errors=0.0, confusable=0.0)
    assert world_sha256(explicit) == BEFORE_SHA256 and explicit.stats["mt_semantic_errors"] == {}


@pytest.fixture(scope="module")
def clean_and_wrong():
    """The same world without surface noise, without and with 30 % semantic errors."""
    args = dict(SMALL, num_items=200, mt_noise=0.0)
    return build_demo_world(**args), build_demo_world(**args, mt_semantic_errors=0.3)


def test_semantic_errors_happen_at_the_asked_rate(clean_and_wrong):
    clean, wrong = clean_and_wrong
    changed = total = 0
    for split in clean.pairs:
        a, b = clean.pairs[split]["target_text"], wrong.pairs[split]["target_text"]
        changed += sum(x != y for x, y in zip(a, b))
        total += len(a)
    assert sum(wrong.stats["mt_semantic_errors"].values()) == changed  # every error changes the sentence
    assert set(wrong.stats["mt_semantic_errors"]) == {"colour", "noun", "relation"}
    assert abs(changed / total - 0.3) < 0.05, (changed, total)  # 960 sentences: 3 standard deviations
    everywhere = build_demo_world(**dict(SMALL, mt_noise=0.0), mt_semantic_errors=1.0)
    assert all(x != y for x, y in zip(clean.pairs["train"]["target_text"], everywhere.pairs["train"]["target_text"]))


def test_semantic_errors_change_only_the_mt_side(clean_and_wrong):
    clean, wrong = clean_and_wrong
    for split in clean.pairs:
        for column in ("visual_id", "source_text", "target_lang", "caption_id"):
            assert clean.pairs[split][column] == wrong.pairs[split][column], (split, column)
    for split in clean.queries:
        assert clean.queries[split][:] == wrong.queries[split][:]
    assert clean.scenes == wrong.scenes and clean.corpus == wrong.corpus
    assert np.array_equal(clean.features.lookup(clean.features.ids)[0], wrong.features.lookup(wrong.features.ids)[0])


def test_semantic_errors_are_deterministic_by_seed():
    a = build_demo_world(**SMALL, mt_semantic_errors=0.4)
    assert world_sha256(a) == world_sha256(build_demo_world(**SMALL, mt_semantic_errors=0.4))
    other = build_demo_world(**dict(SMALL, seed=6), mt_semantic_errors=0.4)
    assert a.pairs["train"]["target_text"] != other.pairs["train"]["target_text"]


def test_a_semantic_error_is_one_wrong_colour_noun_or_relation():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        scene = sample_scene(rng)
        plan = plan_caption(scene, rng)
        wrong_scene, wrong_plan, kind = semantic_error(scene, plan, rng)
        kinds.add(kind)
        if kind == "relation":
            assert wrong_scene == scene and wrong_plan[1] == plan[1]
            changed = [(a, b) for a, b in zip(plan[0], wrong_plan[0]) if a != b]
            assert len(changed) == 1 and changed[0][0].relation != changed[0][1].relation
            assert changed[0][0].subject == changed[0][1].subject and changed[0][0].other == changed[0][1].other
        else:
            assert wrong_plan == plan and [name for name, _ in differences(scene, wrong_scene)] == [kind]
            nouns = [o.noun for o in wrong_scene.objects]
            assert len(set(nouns)) == len(nouns)  # "the car" must still name one object
            assert all(NOUNS[o.noun].animate for o in wrong_scene.objects if o.action)
    assert kinds == {"colour", "noun", "relation"}


def test_confusable_world_has_near_neighbours():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng)
        assert len(differences(scene, confusable_variant(scene, rng))) == 1
    world = build_demo_world(**dict(SMALL, num_items=300), confusable=0.6)
    scenes = list(world.scenes.values())
    assert len({s.key() for s in scenes}) == len(scenes)  # still no two identical items
    near = sum(len(a.objects) == len(b.objects) and len(differences(a, b)) == 1 for a, b in itertools.pairwise(scenes))
    assert 0.5 < near / (len(scenes) - 1) < 0.7, near  # variants of the scene before (plus rare chance twins)
    assert world_sha256(world) == world_sha256(build_demo_world(**dict(SMALL, num_items=300), confusable=0.6))


@pytest.mark.parametrize("key, value, expected", [("demo_mt_semantic_errors", "1.5", "[0, 1]"), ("demo_confusable", "1", "[0, 1)")])
def test_settings_are_range_checked(key, value, expected):
    with pytest.raises(ValueError) as caught:
        parse_config(load_config(None, [f"--{key}", value]))
    assert f"key {key}=" in str(caught.value) and expected in str(caught.value), caught.value
    with pytest.raises(ValueError, match=key.removeprefix("demo_")):
        build_demo_world(**SMALL, **{key.removeprefix("demo_"): float(value)})


def test_recipe_settings_reach_the_world(tmp_path):
    values = load_config(None, ["--dataset", "demo", "--demo_items", "40", "--demo_validation_items", "10",
                                "--demo_test_items", "10", "--demo_mt_noise", "0", "--demo_mt_semantic_errors", "1",
                                "--demo_confusable", "0.5", "--output_dir", str(tmp_path), "--tokenizer_vocab_size", "300"])
    model_args, data_args, _, training_args = parse_config(values)
    data = build_run_data(data_args, model_args, training_args)
    world = build_demo_world(seed=training_args.seed, num_items=40, val_items=10, test_items=10, mt_noise=0.0,
                             mt_semantic_errors=1.0, confusable=0.5, feature_dim=data_args.demo_feature_dim)
    assert data.train_pairs[:] == world.pairs["train"][:]
