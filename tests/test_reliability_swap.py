"""Readers of a checkpoint folder while a new version replaces it (cl2cm_hf/atomic.py,
cl2cm_hf/versioned_folders.py): every load sees one version, never the config of one and the
weights of another; old versions go once no reader holds them; the writer's guarantees stay."""

import threading
from pathlib import Path

import pytest
import torch
from conftest import build_wordpiece_tokenizer, features_config
from transformers import AutoConfig, AutoModel

from cl2cm_hf import CL2CMCrossModalModel, build_processor
from cl2cm_hf.atomic import atomic_directory, final_path, folder_target, recover_directory
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.versioned_folders import VERSION_KEY, pinned_folder

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

# Two checkpoints of different shapes: the version a load saw is told by every tensor's value.
VERSIONS = {1.0: dict(projection_dim=8, text_prefix="one: "), 2.0: dict(projection_dim=4, text_prefix="two: ")}


@pytest.fixture(scope="module")
def checkpoints():
    """{value: (model, processor)}: every parameter of a model filled with its value."""
    tokenizer = build_wordpiece_tokenizer()
    made = {}
    for value, kwargs in VERSIONS.items():
        model = CL2CMCrossModalModel(features_config(**kwargs))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        made[value] = (model, build_processor(tokenizer, kwargs["text_prefix"]))
    return made


def publish(folder: Path, checkpoint) -> None:
    model, processor = checkpoint
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def version_of(model, processor=None) -> float:
    """The one version a loaded model (and processor) came from; AssertionError for a mix."""
    values = {float(p.detach().flatten()[0]) for p in model.parameters()}
    assert len(values) == 1, f"weights of several versions: {values}"
    (value,) = values
    assert model.config.projection_dim == VERSIONS[value]["projection_dim"], "config of another version than the weights"
    if processor is not None:
        assert processor.text_prefix == VERSIONS[value]["text_prefix"], "processor of another version"
    return value


LOADERS = {
    "model class": lambda folder: version_of(CL2CMCrossModalModel.from_pretrained(folder)),
    "AutoModel": lambda folder: version_of(AutoModel.from_pretrained(folder, trust_remote_code=True)),
    "model and processor": lambda folder: version_of(*load_model_and_processor(folder)),
}


def test_concurrent_loads_while_a_writer_swaps_two_checkpoints_of_different_shapes_never_mix(tmp_path, checkpoints):
    folder = tmp_path / "run" / "cross_modal"
    publish(folder, checkpoints[1.0])
    done, failures, seen = threading.Event(), [], {name: [] for name in LOADERS}

    def reader(name):
        while not done.is_set():
            try:
                seen[name].append(LOADERS[name](folder))
            except Exception as err:
                failures.append(f"{name}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=reader, args=(name,)) for name in LOADERS]
    for thread in threads:
        thread.start()
    try:
        for swap in range(24):
            publish(folder, checkpoints[2.0 if swap % 2 == 0 else 1.0])
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert failures == [], f"{len(failures)} failed loads, first: {failures[0]}"
    loads = [value for values in seen.values() for value in values]
    assert len(loads) >= 6 and set(loads) <= {1.0, 2.0}
    # Versions a reader held at the last swap are kept until the next write; with no reader left, what
    # a write leaves is the link, the current and the previous version (hidden).
    publish(folder, checkpoints[1.0])
    names = sorted(p.name for p in folder.parent.iterdir())
    assert names[-1] == "cross_modal" and len(names) == 3 and all(n.startswith(".cross_modal.v") for n in names[:2])
    assert version_of(CL2CMCrossModalModel.from_pretrained(folder)) == 1.0  # the last one published


def test_a_config_read_before_a_swap_loads_the_weights_of_its_own_version(tmp_path, checkpoints):
    """AutoModel reads config.json, then the model class reads the weights: a swap in between."""
    folder = tmp_path / "cross_modal"
    publish(folder, checkpoints[1.0])
    config = AutoConfig.from_pretrained(folder)
    assert getattr(config, VERSION_KEY)
    publish(folder, checkpoints[2.0])  # the version of `config` is now the previous one, kept
    model = CL2CMCrossModalModel.from_pretrained(folder, config=config)
    assert version_of(model) == 1.0 and model.config.name_or_path == str(folder)
    publish(folder, checkpoints[1.0])
    publish(folder, checkpoints[2.0])  # now it is gone: the load reads the current version whole
    assert version_of(CL2CMCrossModalModel.from_pretrained(folder, config=config)) == 2.0


def test_a_version_a_reader_holds_is_kept_until_it_lets_go(tmp_path, checkpoints):
    folder = tmp_path / "cross_modal"
    publish(folder, checkpoints[1.0])
    with pinned_folder(folder) as (held, matches):
        assert matches and Path(held).name.startswith(".cross_modal.v")
        for value in (2.0, 1.0, 2.0):
            publish(folder, checkpoints[value])
        assert Path(held, "model.safetensors").is_file()
        assert version_of(CL2CMCrossModalModel.from_pretrained(held)) == 1.0
    publish(folder, checkpoints[1.0])
    assert not Path(held).exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".cross_modal.v")]) == 2


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_folder_from_before_versions_becomes_the_link_and_a_users_link_is_still_followed(tmp_path, checkpoints, monkeypatch, exchange):
    import cl2cm_hf.atomic

    if not exchange:
        monkeypatch.setattr(cl2cm_hf.atomic, "_renameat2", None)
    old = tmp_path / "cross_modal"
    checkpoints[1.0][0].save_pretrained(old)  # a plain folder, as written before versions
    publish(old, checkpoints[2.0])
    assert old.is_symlink() and version_of(CL2CMCrossModalModel.from_pretrained(old)) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".cross_modal.v")) == ["cross_modal"]
    # A user's link to a stage folder elsewhere: the folder it points to is versioned, the link stays.
    user_link = tmp_path / "runs" / "mine"
    user_link.parent.mkdir()
    user_link.symlink_to(old)
    for value in (1.0, 2.0):
        publish(user_link, checkpoints[value])
        assert user_link.is_symlink() and version_of(CL2CMCrossModalModel.from_pretrained(user_link)) == value
    assert folder_target(user_link) == old and list(user_link.parent.iterdir()) == [user_link]
    recover_directory(user_link)  # nothing to recover: a no-op
    assert final_path(old.resolve()) == old  # the card names the folder by its published name


def test_a_failed_write_leaves_the_published_version_and_no_new_one(tmp_path, checkpoints):
    folder = tmp_path / "cross_modal"
    publish(folder, checkpoints[1.0])
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError), atomic_directory(folder) as tmp:
        checkpoints[2.0][0].save_pretrained(tmp)
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert version_of(CL2CMCrossModalModel.from_pretrained(folder)) == 1.0
