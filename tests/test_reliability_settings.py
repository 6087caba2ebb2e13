"""Every setting has a checked range at parse time (cl2cm_hf/training/arguments.py), numbers YAML 1.1
reads as text are read as numbers, and the published recipe holds no absolute path of the machine."""

import dataclasses
import os

import pytest
import yaml
from transformers import TrainingArguments

from cl2cm_hf.hub.local_paths import config_to_yaml
from cl2cm_hf.training.allowed import TRAINING_ALLOWED
from cl2cm_hf.training.arguments import ARGUMENT_CLASSES
from cl2cm_hf.training.method_arguments import CL2CMArguments
from cl2cm_hf.training.recipe import load_config, parse_config


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("lambda_word", "-0.1", ">= 0"),
        ("lambda_mt", "-1", ">= 0"),
        ("lambda_kt", "-1", ">= 0"),
        ("kt_temperature", "0", "> 0"),
        ("ot_epsilon", "0", "> 0"),
        ("ot_iterations", "0", ">= 1"),
        ("margin", "-0.2", ">= 0"),
        ("max_length", "2", ">= 3"),
        ("per_device_train_batch_size", "0", ">= 1"),
        ("per_device_train_batch_size", "-4", ">= 1"),
        ("per_device_eval_batch_size", "0", ">= 1"),
        ("gradient_accumulation_steps", "0", ">= 1"),
        ("num_train_epochs", "nan", "finite"),
        ("num_train_epochs", ".inf", "finite"),
        ("cl_num_train_epochs", "0", "> 0"),
        ("learning_rate", "-1e-3", "> 0"),
        ("learning_rate", ".nan", "finite"),
        ("cl_learning_rate", "inf", "finite"),
        ("weight_decay", "-0.01", ">= 0"),
        ("visual_dropout", "1.0", "[0, 1)"),
        ("text_dropout", "-0.1", "[0, 1)"),
        ("projection_dim", "0", ">= 1"),
        ("visual_num_layers", "-1", ">= 0"),
        ("freeze_text_layers", "-2", ">= -1"),
        ("demo_mt_noise", "1.5", "[0, 1]"),
        ("num_folds", "1", ">= 2"),
        ("seed", "-1", ">= 0"),
        ("target_langs", "[]", "at least 1"),
        ("target_langs", "['de ', fr]", "did you mean 'de'"),
        ("target_langs", "[DE]", "did you mean 'de'"),
        ("dataset", "multi30", "one of"),
        ("pooling", "max", "one of"),
        ("source_task", "3", "one of"),
    ],
)
def test_out_of_range_settings_are_refused_naming_key_value_and_range(key, value, expected):
    with pytest.raises(ValueError) as caught:
        parse_config(load_config(None, [f"--{key}", value]))
    message = str(caught.value)
    assert f"key {key}=" in message and "not allowed" in message and expected in message, message


def test_the_same_checks_apply_to_recipe_files_and_direct_construction(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("kt_temperature: 0\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: key kt_temperature=0\.0 is not allowed"):
        load_config(recipe)
    with pytest.raises(ValueError, match="key lambda_kt=-1 is not allowed"):
        CL2CMArguments(lambda_kt=-1)
    with pytest.raises(ValueError, match="fold=5 is out of range"):
        parse_config(load_config(None, ["--dataset", "multi30k_r50", "--fold", "5"]))


def test_every_setting_declares_its_range():
    for cls in ARGUMENT_CLASSES[:-1]:
        for f in dataclasses.fields(cls):
            text_like = f.type in (str, "str", str | None, "str | None", bool, "bool")
            assert text_like or "allowed" in f.metadata, f"{cls.__name__}.{f.name} has no range"
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(TRAINING_ALLOWED) <= names


def test_yaml_1_1_numbers_written_as_text_are_read_as_numbers(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1e-3\ncl_learning_rate: 5E-5\nweight_decay: 1e-2\nmax_steps: 1e3\n")
    values = load_config(recipe)
    assert values["learning_rate"] == 0.001 and values["cl_learning_rate"] == 5e-5 and values["weight_decay"] == 0.01
    assert values["max_steps"] == 1000 and isinstance(values["max_steps"], int)
    assert load_config(None, ["--learning_rate", "2e-4"])["learning_rate"] == 2e-4
    recipe.write_text("max_steps: 1.5e0\n")
    with pytest.raises(ValueError, match="key 'max_steps' expects"):
        load_config(recipe)


def test_the_published_recipe_holds_no_absolute_path(tmp_path):
    inside = os.path.join(os.getcwd(), "runs", "demo")
    values = load_config(None, ["--output_dir", inside, "--dataset", "files", "--train_file", "/home/someone/data/train.jsonl",
                                "--features_file", "relative/store", "--learning_rate", "1e-3"])
    text = config_to_yaml(values)
    assert os.getcwd() not in text and "/home/someone" not in text
    published = yaml.safe_load(text)
    assert published["output_dir"] == "runs/demo" and published["train_file"] == "train.jsonl"
    assert published["features_file"] == "relative/store" and published["learning_rate"] == 1e-3
    assert text.startswith("# Absolute paths outside") and "train_file" in text.splitlines()[0]
    assert load_config(None) == yaml.safe_load(config_to_yaml(load_config(None)))  # nothing else changes


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--kt_teacher_entropy", "2.1", "--per_device_train_batch_size", "8"], r"kt_teacher_entropy=2\.1 is above .*ln\(8\) = 2\.079"),
        (["--kt_teacher_entropy", "4.2", "--per_device_train_batch_size", "16", "--kt_queue_size", "48"],
         r"kt_teacher_entropy=4\.2 is above .*64 columns .*kt_queue_size=48"),
        (["--kt_neighbour_group_size", "3", "--precompute_teacher", "true", "--per_device_train_batch_size", "8"],
         "kt_neighbour_group_size=3 must divide per_device_train_batch_size=8"),
        (["--kt_neighbour_group_size", "16", "--precompute_teacher", "true", "--per_device_train_batch_size", "8"],
         "kt_neighbour_group_size=16 must divide"),
        (["--text_hidden_size", "30", "--text_num_heads", "4"], "text_hidden_size=30 must be a multiple of text_num_heads=4"),
        (["--visual_num_layers", "1", "--visual_hidden_size", "30", "--visual_num_heads", "4"], "visual_hidden_size=30"),
        (["--freeze_text_layers", "3", "--text_num_layers", "2"], "freeze_text_layers=3 is more layers than text_num_layers=2"),
        (["--cl_freeze_text_layers", "5"], "cl_freeze_text_layers=5 is more layers than text_num_layers=2"),
        (["--demo_pixels", "true"], "demo_pixels=True with visual_encoder_type='features'"),
        (["--visual_encoder_type", "backbone", "--vision_config", "{model_type: vit}"], "demo_pixels=False with visual_encoder_type='backbone'"),
        (["--stage", "both", "--cross_lingual_model", "teacher"], "cross_lingual_model is the teacher of stage cm"),
        (["--stage", "cm"], "stage cm with lambda_kt > 0 needs cross_lingual_model"),
    ],
)
def test_settings_that_cannot_do_what_they_ask_are_refused_naming_them(argv, expected):
    with pytest.raises(ValueError, match=expected):
        parse_config(load_config(None, argv))


def test_an_entropy_target_up_to_what_the_batch_and_queue_allow_is_accepted():
    parse_config(load_config(None, ["--kt_teacher_entropy", "2.07", "--per_device_train_batch_size", "8"]))
    parse_config(load_config(None, ["--kt_teacher_entropy", "4.15", "--per_device_train_batch_size", "16", "--kt_queue_size", "48"]))
    parse_config(load_config(None, ["--kt_teacher_entropy", "9", "--lambda_kt", "0"]))  # unused without the term


@pytest.mark.parametrize("key", ["output_dir", "train_file", "features_file", "text_model", "tokenizer", "cross_lingual_model"])
@pytest.mark.parametrize("value", ["", "\u00a0", "\u200b"], ids=ascii)
def test_empty_paths_are_refused_naming_the_setting(key, value):
    with pytest.raises(ValueError, match=f"key {key}=.* is not allowed; expected a non-empty path or name"):
        parse_config(load_config(None, [f"--{key}", value]))


def test_empty_output_dir_ends_the_command_with_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    from cl2cm_hf.cli.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--output_dir", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output_dir=''" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_duplicate_keys_in_a_recipe_are_refused_naming_key_and_lines(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 1\nlearning_rate: 1e-3\n\nseed: 2\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: key 'seed' is given twice \(line 1 and line 4\)"):
        load_config(recipe)
    recipe.write_text("vision_config:\n  model_type: vit\n  image_size: 32\n  image_size: 64\n")
    with pytest.raises(ValueError, match=r"key 'image_size' is given twice \(line 3 and line 4\)"):
        load_config(recipe)


def test_numbers_written_as_text_follow_one_rule(tmp_path):
    """A number setting takes a number or text that spells one (quoted or as YAML 1.1 reads `1e-3`);
    other text is refused naming the file and the key."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('learning_rate: "1e-3"\nnum_train_epochs: "2"\nmax_steps: " 1_000 "\nkt_queue_size: "64"\n')
    values = load_config(recipe)
    assert (values["learning_rate"], values["num_train_epochs"], values["max_steps"], values["kt_queue_size"]) == (0.001, 2.0, 1000, 64)
    for text, key in (('num_train_epochs: "two"', "num_train_epochs"), ('learning_rate: "1e-3x"', "learning_rate"),
                      ('per_device_train_batch_size: "8.5"', "per_device_train_batch_size"), ("seed: yes", "seed")):
        recipe.write_text(text + "\n")
        with pytest.raises(ValueError, match=rf"recipe\.yaml: key '{key}' expects"):
            load_config(recipe)


def test_list_settings_take_several_values_on_the_command_line():
    values = load_config(None, ["--resume_allow_changes", "lambda_kt", "seed", "--target_langs", "de", "fr", "--seed", "3"])
    assert values["resume_allow_changes"] == ["lambda_kt", "seed"] and values["target_langs"] == ["de", "fr"]
    assert load_config(None, ["--resume_allow_changes", "seed"])["resume_allow_changes"] == ["seed"]
    assert load_config(None, ["--target_langs", "[de, fr]"])["target_langs"] == ["de", "fr"]
    with pytest.raises(ValueError, match="--seed takes one value, got 2"):
        load_config(None, ["--seed", "1", "2"])


@pytest.mark.parametrize(
    "field, value",
    [("projection_dim", "256"), ("visual_dropout", "0.1"), ("logit_scale_init_value", "2.6"),
     ("text_config.hidden_size", "32"), ("text_config.num_hidden_layers", "2"), ("text_config.hidden_dropout_prob", "0.1")],
)
def test_numbers_written_as_text_in_a_model_config_json_are_refused_naming_the_field(tmp_path, field, value):
    """A checkpoint's config.json is written by code: a number as text is a hand edit, refused (a
    ValueError naming the field) rather than read as a number."""
    import json

    from cl2cm_hf.configuration_cl2cm import CL2CMCrossModalConfig

    CL2CMCrossModalConfig(text_config={"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2}).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    *parents, name = field.split(".")
    holder = config
    for part in parents:
        holder = holder[part]
    holder[name] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{field}={value!r} is invalid"):
        CL2CMCrossModalConfig.from_pretrained(tmp_path)
