"""Checkpoints that would load wrong are refused: a config.json without a field that decides the
architecture, weights that do not fit the config, and an `auto_map` that points at code outside
the checkpoint."""

import json

import pytest
import torch
from conftest import backbone_config, cross_lingual_config, features_config
from transformers import AutoConfig, AutoModel

from cl2cm_hf.checkpoint_safety import UnsafeCheckpointError, check_auto_map
from cl2cm_hf.configuration_cl2cm import CL2CMCrossModalConfig
from cl2cm_hf.modeling_cl2cm import CheckpointMismatchError, CL2CMCrossLingualModel, CL2CMCrossModalModel


def _saved(tmp_path, model_cls, config):
    model = model_cls(config)
    model.save_pretrained(tmp_path)
    return model


def _edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "model_cls, config_fn, path",
    [
        (CL2CMCrossModalModel, features_config, ["visual_num_layers"]),
        (CL2CMCrossModalModel, features_config, ["visual_hidden_size"]),
        (CL2CMCrossModalModel, features_config, ["text_config", "num_hidden_layers"]),
        (CL2CMCrossModalModel, features_config, ["text_config", "hidden_size"]),
        (CL2CMCrossModalModel, features_config, ["text_config"]),
        (CL2CMCrossModalModel, backbone_config, ["vision_config", "num_hidden_layers"]),
        (CL2CMCrossLingualModel, cross_lingual_config, ["share_encoders"]),
        (CL2CMCrossLingualModel, cross_lingual_config, ["text_config", "vocab_size"]),
    ],
)
def test_config_missing_an_architecture_field_is_an_error_naming_it(tmp_path, model_cls, config_fn, path):
    _saved(tmp_path, model_cls, config_fn(visual_num_layers=1) if model_cls is CL2CMCrossModalModel else config_fn())

    def drop(config):
        for key in path[:-1]:
            config = config[key]
        del config[path[-1]]

    _edit_config(tmp_path, drop)
    name = ".".join(path)
    for load in (model_cls.from_pretrained, AutoModel.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=rf"{name} is missing from the saved config"):
            load(tmp_path)


def test_configs_built_in_code_and_saved_by_this_code_keep_loading(tmp_path):
    config = CL2CMCrossModalConfig(visual_feature_dim=8, visual_hidden_size=16, projection_dim=4)
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).visual_hidden_size == 16
    model = _saved(tmp_path / "m", CL2CMCrossModalModel, features_config(visual_num_layers=1))
    loaded = CL2CMCrossModalModel.from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("field, value", [("visual_num_layers", 0), ("visual_num_layers", 2)])
def test_weights_that_do_not_fit_the_config_are_an_error_not_a_warning(tmp_path, field, value):
    _saved(tmp_path, CL2CMCrossModalModel, features_config(visual_num_layers=1))
    _edit_config(tmp_path, lambda config: config.update({field: value}))
    kind = "unexpected" if value == 0 else "missing"
    for load in (CL2CMCrossModalModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(CheckpointMismatchError, match=rf"do not fit CL2CMCrossModalModel.*{kind} \["):
            load(tmp_path)


def test_text_depth_edited_in_the_config_is_an_error(tmp_path):
    _saved(tmp_path, CL2CMCrossLingualModel, cross_lingual_config())
    _edit_config(tmp_path, lambda config: config["text_config"].update(num_hidden_layers=1))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \[.*layer\.1"):
        CL2CMCrossLingualModel.from_pretrained(tmp_path)


# --- auto_map -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reference",
    [
        "/tmp/evil.Evil",
        "/tmp/evil/module.Evil",
        "../outside.Evil",
        "sub/../../outside.Evil",
        "someone/other-repo--modeling.Evil",
        "C:\\\\evil.Evil",
        "missing_module.Evil",
        "modeling_cl2cm",
    ],
)
def test_auto_map_entries_pointing_outside_the_checkpoint_are_refused(tmp_path, reference):
    _saved(tmp_path, CL2CMCrossModalModel, features_config())
    check_auto_map(tmp_path)  # what the project saves passes
    _edit_config(tmp_path, lambda config: config["auto_map"].update(AutoModel=reference))
    with pytest.raises(UnsafeCheckpointError, match=r"config\.json: auto_map\['AutoModel'\]"):
        check_auto_map(tmp_path)
    if reference != "missing_module.Evil":  # a mapping alone: the form is checked, not the files
        config = json.loads((tmp_path / "config.json").read_text())
        with pytest.raises(UnsafeCheckpointError, match=r"auto_map\['AutoModel'\]"):
            check_auto_map(config)


def test_auto_map_in_tokenizer_config_and_lists_is_checked_and_symlinked_code_refused(tmp_path):
    _saved(tmp_path, CL2CMCrossModalModel, features_config())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["modeling_cl2cm.Slow", "/x/tok.Fast"]}}))
    with pytest.raises(UnsafeCheckpointError, match=r"tokenizer_config\.json: auto_map\['AutoTokenizer'\]\[1\]"):
        check_auto_map(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [None, "modeling_cl2cm.X"]}}))
    check_auto_map(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.py"
    outside.write_text("")
    (tmp_path / "linked.py").symlink_to(outside)
    _edit_config(tmp_path, lambda config: config["auto_map"].update(AutoModel="linked.Evil"))
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint"):
        check_auto_map(tmp_path)


def test_a_config_that_is_not_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnsafeCheckpointError, match=r"config\.json: not valid JSON"):
        check_auto_map(tmp_path)


def test_every_way_the_project_loads_a_checkpoint_refuses_outside_code(tmp_path):
    """The leaderboard, query, search and the push check all go through the same checks."""
    from conftest import build_wordpiece_tokenizer

    from cl2cm_hf.cli.leaderboard import main as leaderboard
    from cl2cm_hf.hub import CheckpointError, check_checkpoint
    from cl2cm_hf.inference import load_model_and_processor
    from cl2cm_hf.processing_cl2cm import build_processor
    from cl2cm_hf.search import load_checkpoint

    folder = tmp_path / "ckpt"
    _saved(folder, CL2CMCrossModalModel, features_config())
    build_processor(build_wordpiece_tokenizer()).save_pretrained(folder)
    load_model_and_processor(folder)  # as saved: loads
    evil = tmp_path / "evil.py"
    evil.write_text("raise SystemExit('outside code ran')\n")
    _edit_config(folder, lambda config: config["auto_map"].update(AutoModel=f"{tmp_path}/evil.Evil"))
    for load in (load_model_and_processor, load_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=r"auto_map\['AutoModel'\]"):
            load(folder)
    with pytest.raises(CheckpointError, match=r"auto_map\['AutoModel'\]"):
        check_checkpoint(folder)
    assert leaderboard(["--models", str(folder), "--datasets", "demo", "--out", str(tmp_path / "board")]) == 1
    assert "auto_map['AutoModel']" in json.loads((tmp_path / "board.json").read_text())["failures"][str(folder)]
    with pytest.raises(ValueError, match="cl2cm_cross_lingual.*expected a 'cl2cm_cross_modal'"):
        _saved(tmp_path / "stage1", CL2CMCrossLingualModel, cross_lingual_config())
        load_model_and_processor(tmp_path / "stage1")
