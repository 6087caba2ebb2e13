"""What a push publishes and what a load accepts (cl2cm_hf/hub/push.py, cl2cm_hf/checkpoint_safety.py,
cl2cm_hf/inference.py): only the checkpoint's own files, never a file through a
symlink out of the folder, never broken weights; bad configs, a missing tokenizer.json and absurd
processor sizes are named (file and field) before anything is uploaded or any image decoded."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_hub_cards import FakeHubApi, make_checkpoint, records_for
from transformers import AutoProcessor

from cl2cm_hf.checkpoint_safety import BadCheckpointError
from cl2cm_hf.hub import PLOT_FILENAME, CheckpointError, build_card, push_checkpoint
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.retrieval import RetrievalRanks

SECRET = "hunter2-do-not-publish"
# What a carded checkpoint consists of (make_checkpoint with a vision backbone, then build_card).
CHECKPOINT = {"config.json", "model.safetensors", "configuration_cl2cm.py", "modeling_cl2cm.py", "losses.py",
              "processing_cl2cm.py", "video_processing_cl2cm.py", "processor_sizes.py", "versioned_folders.py", "errors.py", "tokenizer.json", "tokenizer_config.json",
              "processor_config.json", "README.md", PLOT_FILENAME, "training_config.yaml"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A carded checkpoint with a vision backbone (so a processor config with image sizes)."""
    folder = make_checkpoint(tmp_path_factory.mktemp("pristine") / "cl2cm-tiny", backbone=True)
    rng = np.random.default_rng(0)
    ranks = {"de": RetrievalRanks(rng.integers(1, 30, 50), rng.integers(1, 12, 10), np.arange(10))}
    build_card(folder, records_for("de", ranks["de"].t2v, ranks["de"].v2t), ranks=ranks, repo_id="org/tiny")
    return folder


@pytest.fixture
def checkpoint(pristine, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(pristine, folder)
    return folder


def refused(folder: Path, tmp_path: Path, *message: str) -> None:
    """The push fails naming every part of `message`, and nothing reaches the Hub."""
    api = FakeHubApi(tmp_path / "hf")
    with pytest.raises(CheckpointError) as error:
        push_checkpoint(folder, "org/x", api=api)
    for part in message:
        assert part in str(error.value), str(error.value)
    assert api.calls == []


def test_a_push_publishes_exactly_the_checkpoint_files_and_logs_what_it_leaves_out(checkpoint, tmp_path, caplog):
    for name in ("secrets.yaml", "notes.txt", "extra_config.json", ".env", "data.csv", "holiday.png", "run.json"):
        (checkpoint / name).write_text(f"token: {SECRET}\n")
    (checkpoint / "sub").mkdir()
    (checkpoint / "sub" / "config.json").write_text("{}")
    with open(checkpoint / "README.md", "a", encoding="utf-8") as card:  # only images the card shows are published
        card.write("\n![env](.env) ![secrets](secrets.yaml) ![up](../holiday.png) <img src='notes.txt'>\n")
    api = FakeHubApi(tmp_path / "hf")
    with caplog.at_level(logging.INFO, logger="cl2cm_hf.hub.push"):
        push_checkpoint(checkpoint, "org/tiny", api=api)
    uploaded = set(api.calls[1][4])
    assert uploaded == CHECKPOINT
    snapshot = next((tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots").iterdir())
    assert not any(SECRET in p.read_text(errors="replace") for p in snapshot.iterdir())
    logged = caplog.text
    assert "not published" in logged and all(name in logged for name in ("secrets.yaml", "notes.txt", "sub/", "test_gallery/"))


def test_a_file_that_is_a_symlink_out_of_the_folder_is_refused_naming_it(checkpoint, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("README.md", "tokenizer.json", "config.json", "model.safetensors", "modeling_cl2cm.py"):
        folder = tmp_path / f"link-{name}"
        shutil.copytree(checkpoint, folder)
        outside = elsewhere / name
        shutil.move(folder / name, outside)
        (folder / name).symlink_to(outside)
        refused(folder, tmp_path, f"{folder / name} is a symlink to {outside}")
    # Links out of the folder that are no checkpoint file are left out, never followed.
    (elsewhere / "notes.txt").write_text(SECRET)
    (checkpoint / "notes.txt").symlink_to(elsewhere / "notes.txt")
    (checkpoint / "extra_config.json").symlink_to(elsewhere / "notes.txt")
    api = FakeHubApi(tmp_path / "hf")
    push_checkpoint(checkpoint, "org/tiny", api=api)
    assert set(api.calls[1][4]) == CHECKPOINT
    # A link to a file of the folder itself is fine.
    (checkpoint / "README.md").rename(checkpoint / "card.md")
    (checkpoint / "README.md").symlink_to("card.md")
    push_checkpoint(checkpoint, "org/tiny", api=api)


@pytest.mark.parametrize("damage", ["empty", "garbage", "half", "tail cut", "extra bytes", "header only"])
def test_broken_weights_are_refused_before_anything_is_uploaded(checkpoint, tmp_path, damage):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes({"empty": b"", "garbage": np.random.default_rng(0).bytes(len(data)), "half": data[: len(data) // 2],
                         "tail cut": data[:-1], "extra bytes": data + b"\0" * 8, "header only": data[:header]}[damage])
    refused(checkpoint, tmp_path, f"{weights}: not a complete safetensors file")


def test_weights_that_do_not_fit_the_config_are_refused(checkpoint, tmp_path):
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["projection_dim"] = 4
    config_path.write_text(json.dumps(config))
    refused(checkpoint, tmp_path, "model.safetensors: the weights do not fit config.json",
            "text_model.projection.weight of shape [8, 16], config.json says [4, 16]")
    config["projection_dim"], config["visual_num_layers"] = 8, 1  # layers the file lacks
    config_path.write_text(json.dumps(config))
    refused(checkpoint, tmp_path, "the weights do not fit config.json: missing ['visual_model.frame_pooler.layers.")


def test_a_sharded_checkpoint_is_checked_shard_by_shard(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, checkpoint / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    api = FakeHubApi(tmp_path / "hf")
    push_checkpoint(checkpoint, "org/sharded", api=api)
    assert set(api.calls[1][4]) == CHECKPOINT - {"model.safetensors"} | set(shards) | {"model.safetensors.index.json"}
    second = checkpoint / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:100])
    refused(checkpoint, tmp_path, f"{second}: not a complete safetensors file")
    second.unlink()
    refused(checkpoint, tmp_path, f"{second}: missing (listed in model.safetensors.index.json)")
    index["weight_map"][names[0]] = "../model.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(checkpoint, tmp_path, "weight_map[", "'../model.safetensors'; expected a .safetensors file name in the folder")


@pytest.mark.parametrize("value", [[1, 2], 3, "text", None], ids=["list", "number", "string", "null"])
@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "processor_config.json"])
def test_a_config_that_is_json_but_not_an_object_is_named_by_push_and_load(checkpoint, tmp_path, name, value):
    (checkpoint / name).write_text(json.dumps(value))
    expected = f"{checkpoint / name}: holds a JSON {type(value).__name__}; expected an object"
    refused(checkpoint, tmp_path, expected)
    with pytest.raises(ValueError) as error:
        load_model_and_processor(checkpoint)
    assert expected in str(error.value)


def test_a_missing_tokenizer_json_is_named_by_load_and_push(checkpoint, tmp_path):
    (checkpoint / "tokenizer.json").unlink()
    expected = f"{checkpoint / 'tokenizer.json'}: missing; the tokenizer of tokenizer_config.json needs it (or vocab.txt)"
    with pytest.raises(BadCheckpointError, match="tokenizer.json: missing"):
        load_model_and_processor(checkpoint)
    refused(checkpoint, tmp_path, expected)
    (checkpoint / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "query", ":", "hund"]))
    model, processor = load_model_and_processor(checkpoint)  # the slow vocabulary is enough
    assert processor(text=["hund"])["input_ids"][0][1:-1] != [1]


ABSURD = [
    ("size", {"shortest_edge": 10**6}, "size.shortest_edge = 1000000"),
    ("size", {"height": 10**6, "width": 10**6}, "size.height = 1000000"),
    ("size", {"shortest_edge": -32}, "size.shortest_edge = -32"),
    ("size", {"shortest_edge": 0}, "size.shortest_edge = 0"),
    ("size", {"shortest_edge": 32.5}, "size.shortest_edge = 32.5"),
    ("size", {"shortest_edge": "32"}, "size.shortest_edge = '32'"),
    ("size", {"shortest_edge": True}, "size.shortest_edge = True"),
    ("size", {"edge": 32}, "size = {'edge': 32}"),
    ("crop_size", {"height": 64, "width": 32}, "crop_size.height = 64 is refused: larger than the image after resizing"),
    ("crop_size", 10**7, "crop_size = 10000000"),
    ("num_frames", 10**9, "num_frames = 1000000000"),
    ("max_frames", 0, "max_frames = 0"),
]


@pytest.mark.parametrize("field, value, expected", ABSURD, ids=[f"{f}={v}" for f, v, _ in ABSURD])
def test_absurd_processor_sizes_are_refused_naming_file_and_field_before_any_image(checkpoint, tmp_path, monkeypatch, field, value, expected):
    path = checkpoint / "processor_config.json"
    config = json.loads(path.read_text())
    config["image_processor"][field] = value
    path.write_text(json.dumps(config))
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("the processor was loaded")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", never)
    with pytest.raises(BadCheckpointError) as error:
        load_model_and_processor(checkpoint)
    assert f"{path}: image_processor: {expected}" in str(error.value)
    refused(checkpoint, tmp_path, expected)
    monkeypatch.undo()
    # The processor loaded directly (the checkpoint's own code) refuses them too, naming the field.
    with pytest.raises(ValueError, match=field):
        AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
