"""Issue 24: the index built by a Ray Data job on a local 2-worker cluster equals the one-process index,
also when a worker is killed mid-job (its chunk is redone, no shard duplicated); ``cl2cm-index --engine ray``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile

import numpy as np
import pytest
from conftest import save_features_world

from cl2cm_hf.cli.index import main as index_main
from cl2cm_hf.search import SearchIndex, build_index

ROWS, CHUNK, BATCH = 40, 8, 4  # five chunks (shards) of two batches
# Same batches and chunks as the reference: each item is embedded in the same batch, so the embeddings are
# expected equal bit for bit (the workers run torch on one thread, the reference on more: checked, not assumed).
SETTINGS = dict(batch_size=BATCH, chunk_size=CHUNK, num_workers=0, faiss="none", progress=False, query_encoder=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = save_features_world(tmp_path_factory.mktemp("ray"), ROWS)
    build_index(root / "model", root / "reference", features=root / "store", **SETTINGS)
    (root / "kill").mkdir()
    return root


@pytest.fixture(scope="module", autouse=True)
def ray_files():
    """Ray's session files (sockets, logs) in a folder of this module's own, removed at the end, not in
    /tmp/ray; short, as Ray's socket paths must be. The clusters' auth token is given in the environment:
    a new local cluster would otherwise write one to ~/.ray/auth_token."""
    folder = tempfile.mkdtemp(prefix="cl2cm-ray-")
    settings = {"RAY_TMPDIR": folder, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield folder
    for name, value in before.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(world):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cl2cm-hf[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'cl2cm-hf[ray]')")
    from cl2cm_hf.search.ray_build import KILL_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {KILL_ENV: str(world / "kill")}})
    yield ray
    ray.shutdown()


def _same_index(built, reference):
    got, want = SearchIndex.load(built), SearchIndex.load(reference)
    assert list(got.ids) == list(want.ids) == [f"item{i:03d}" for i in range(ROWS)]
    np.testing.assert_array_equal(np.asarray(got.embeddings), np.asarray(want.embeddings))
    meta, expected = dict(got.metadata), dict(want.metadata)
    assert meta.pop("created") and expected.pop("created")
    assert meta == expected


def _shard_entries(folder):
    from safetensors import safe_open

    shards, keys, rows = sorted(folder.glob("*.safetensors")), [], 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            keys += [entry["key"] for entry in json.loads(handle.metadata()["entries"])]
            rows += handle.get_slice("embeddings").get_shape()[0]
    return len(shards), keys, rows


def test_cli_engine_ray_errors(world, tmp_path, capsys, monkeypatch):
    args = [str(world / "model"), "--features", str(world / "store"), "--out", str(tmp_path / "index")]
    with pytest.raises(SystemExit) as exit_info:
        index_main([*args, "--ray-address", "auto"])
    assert exit_info.value.code == 2 and "the --ray-* options need --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert index_main([*args, "--engine", "ray"]) == 2
    assert "pip install 'cl2cm-hf[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()  # refused before anything is written
    monkeypatch.undo()
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cl2cm-hf[ray]')")
    assert not ray.is_initialized()  # runs before the tests that start the module's cluster
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # where `auto` looks for a `ray start` cluster: none there
    assert index_main([*args, "--engine", "ray", "--ray-address", "auto", "--no-progress"]) == 2
    assert "ray address 'auto': no Ray cluster to join" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 16], ids=["one_window", "three_windows"])
def test_two_worker_build_equals_one_process(world, cluster, tmp_path, monkeypatch, window):
    from cl2cm_hf.search import index_build
    from cl2cm_hf.search.ray_build import build_index_on_ray

    if window:  # the build plans 16 items at a time: a Ray job a window, in the one cluster
        monkeypatch.setattr(index_build, "WINDOW", window)
    report = build_index_on_ray(world / "model", tmp_path / "index", features=world / "store", workers=2, **SETTINGS)
    assert (report.count, report.encoded, report.reused) == (ROWS, ROWS, 0)
    _same_index(tmp_path / "index", world / "reference")
    again = build_index_on_ray(world / "model", tmp_path / "index", features=world / "store", workers=2, **SETTINGS)
    assert (again.encoded, again.reused) == (0, ROWS)  # a rerun reuses the index; nothing is sent to Ray


@pytest.mark.slow
def test_killed_worker_chunk_is_redone_once(world, cluster, tmp_path):
    from cl2cm_hf.search.ray_build import RayEncoder

    encoder, seen = RayEncoder(world / "model", features=world / "store", workers=2, progress=False), {}

    def counted(items, chunks, shards, namespace, **settings):
        encoder(items, chunks, shards, namespace, **settings)
        seen["chunks"], seen["shards"] = len(chunks), _shard_entries(shards)  # before the index replaces the folder

    (world / "kill" / "kill-2").touch()  # the worker that writes chunk 2's shard dies before reporting it
    report = build_index(world / "model", tmp_path / "index", features=world / "store", encoder=counted, **SETTINGS)
    assert not (world / "kill" / "kill-2").exists()  # the kill happened
    count, keys, rows = seen["shards"]
    assert seen["chunks"] == count == ROWS // CHUNK and rows == ROWS and len(keys) == len(set(keys)) == ROWS
    assert sorted(encoder.written) == list(range(ROWS // CHUNK))  # every chunk reported exactly once
    assert report.count == ROWS
    _same_index(tmp_path / "index", world / "reference")


@pytest.mark.slow
def test_cli_engine_ray(world, cluster, tmp_path, capsys):
    args = [str(world / "model"), "--features", str(world / "store"), "--out", str(tmp_path / "index"), "--batch-size", str(BATCH),
            "--chunk-size", str(CHUNK), "--num-workers", "0", "--faiss", "none", "--no-progress", "--no-query-encoder"]
    assert index_main([*args, "--engine", "ray", "--ray-workers", "2"]) == 0
    assert f"{ROWS} items indexed ({ROWS} encoded" in capsys.readouterr().out
    _same_index(tmp_path / "index", world / "reference")
