"""Search index over a user's files (issue 13, items 3-4): `build_index` / ``cl2cm-index``,
`SearchIndex` / ``cl2cm-search``, with a tiny random backbone checkpoint (offline, CPU).

A folder mixing good images, images that need converting (grey, CMYK, alpha, palette, 16-bit)
and broken files (empty, truncated JPEG, not an image, decompression bomb, unreadable): every good
image is found by its own pixels, every broken file is in ``report.json`` with its reason. A
build SIGKILLed after some shards and rerun, a 2-process torchrun build and an incremental
rebuild all give the index that one uninterrupted process gives.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import backbone_config, build_wordpiece_tokenizer, features_config
from test_distributed import subprocess_env, torchrun

from cl2cm_hf import CL2CMCrossModalModel, build_processor
from cl2cm_hf.cli.index import main as index_main
from cl2cm_hf.cli.search import main as search_main
from cl2cm_hf.data import VisualFeatureStore
from cl2cm_hf.inference import encode_visual
from cl2cm_hf.search import BrokenIndexError, SearchIndex, build_index, load_checkpoint, open_image
from cl2cm_hf.search.index_files import load_rows

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "search" / "build.py"
SMALL = {"batch_size": 2, "chunk_size": 4, "num_workers": 0, "progress": False, "query_encoder": False}  # as tests/search/build.py
CONVERTED = ["grey.png", "cmyk.jpg", "rgba.png", "palette.png", "sixteen.png"]
BROKEN = {"empty.jpg": "empty file", "truncated.jpg": "truncated", "notes.txt": "not an image",
          "bomb.png": "too many pixels", "locked.png": "permission denied"}


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _unreadable(path: Path) -> None:
    """A file whose open raises PermissionError, also for root (who ignores chmod): a link to a
    write-only sysctl, which the kernel checks even for root."""
    if os.geteuid() != 0:
        path.write_bytes(b"secret")
        path.chmod(0)
        return
    target = Path("/proc/sys/vm/drop_caches")
    try:
        target.open("rb").close()
    except PermissionError:
        path.symlink_to(target)
        return
    except OSError:
        pass
    pytest.skip("no file here that root cannot read: the unreadable-file case cannot be simulated")


def _write_folder(root: Path) -> list[str]:
    """Good images (some needing conversion) and broken files; returns the good ids."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    good = []
    for i in range(8):
        name = f"photo{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(root / name)
        good.append(name)
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 18, 3), dtype=np.uint8)).save(root / "sub" / "nested.png")
    good.append("sub/nested.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(root / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    palette = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("P")
    palette.save(root / "palette.png", transparency=0)
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(root / "sixteen.png")
    good += CONVERTED
    (root / "empty.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "full.jpg")
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    (root / "notes.txt").write_text("not a picture")
    (root / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    _unreadable(root / "locked.png")
    (root / ".hidden.png").write_bytes(b"skipped: hidden files are not indexed")
    return sorted(good)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random backbone checkpoint with its processor, the mixed folder and its reference
    index (one process, uninterrupted)."""
    from transformers import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    CL2CMCrossModalModel(backbone_config(text_prefix="query: ")).save_pretrained(root / "model")
    image_processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    build_processor(build_wordpiece_tokenizer(), "query: ", image_processor).save_pretrained(root / "model")
    good = _write_folder(root / "photos")
    report = build_index(root / "model", root / "reference", images=root / "photos", **{**SMALL, "query_encoder": True})
    return {"root": root, "model": root / "model", "photos": root / "photos", "good": good,
            "reference": root / "reference", "report": report}


def _env(tmp: Path) -> dict:
    """The distributed tests' environment with this process's thread count: the same batches on
    the same number of threads give the same bits (1 thread vs 2 differs in the last place)."""
    return {**subprocess_env(tmp), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _same_index(a: Path, b: Path, atol: float = 0.0) -> None:
    (cols_a, emb_a), (cols_b, emb_b) = load_rows(a), load_rows(b)
    assert cols_a == cols_b
    np.testing.assert_allclose(emb_a, emb_b, rtol=0, atol=atol)
    skipped = [json.loads((f / "report.json").read_text())["skipped"] for f in (a, b)]
    assert skipped[0] == skipped[1]


def test_good_images_searchable_broken_ones_reported(world):
    report, index_dir = world["report"], world["reference"]
    assert report.count == len(world["good"]) and report.encoded == report.count
    reasons = {entry["id"]: entry["reason"] for entry in json.loads((index_dir / "report.json").read_text())["skipped"]}
    assert set(reasons) == set(BROKEN)
    for name, reason in BROKEN.items():
        assert reason in reasons[name], (name, reasons[name])
    metadata = json.loads((index_dir / "metadata.json").read_text())
    assert metadata["count"] == len(world["good"]) and metadata["dim"] == 16 and metadata["skipped"] == len(BROKEN)
    assert metadata["model_revision"].startswith("sha256:") and metadata["model"] == str(world["model"])
    assert not (index_dir / "shards").exists()

    index = SearchIndex.load(index_dir)
    assert index.ids == world["good"] and len(index) == len(world["good"])
    faiss = pytest.importorskip("faiss") if metadata["faiss"] else None
    if faiss is not None:
        assert index.faiss_index is not None and metadata["faiss"]["recall@10"] >= 0.9
    for name in world["good"]:  # each good image (converted ones too) is found by its own pixels
        for exact in (True, False):
            hit = index.search_image(world["photos"] / name, top_k=1, exact=exact)[0]
            assert hit.id == name and hit.path == str(world["photos"] / name) and hit.score == pytest.approx(1.0, abs=1e-5)
    hits = index.search("ein roter hund", top_k=3, exact=True)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
    # The hits are the exact top-3 of the processor's text embedding against the stored rows.
    model, processor = load_checkpoint(world["model"])
    text = model.get_text_features(**{k: v for k, v in processor(text=["ein roter hund"], return_tensors="pt").items()
                                      if k != "token_type_ids"}).pooler_output
    want = torch.from_numpy(index.embeddings) @ text[0].detach()
    assert [h.id for h in hits] == [index.ids[i] for i in want.topk(3).indices.tolist()]


def test_sixteen_bit_and_alpha_are_converted_not_clipped(world):
    from PIL import Image

    with Image.open(world["photos"] / "sixteen.png") as raw:
        values = np.asarray(raw).astype(np.int64)
    converted = np.asarray(open_image(world["photos"] / "sixteen.png"))
    assert converted.shape == (20, 20, 3) and converted.dtype == np.uint8
    np.testing.assert_array_equal(converted[..., 0], values >> 8)  # not all 255 as a plain convert would give
    assert open_image(world["photos"] / "rgba.png").mode == "RGB" and open_image(world["photos"] / "cmyk.jpg").mode == "RGB"


def test_killed_build_then_rerun_gives_the_same_index(world, tmp_path):
    out = tmp_path / "index"
    proc = subprocess.Popen([sys.executable, str(HELPER), str(world["model"]), str(world["photos"]), str(out), "--slow", "0.4"],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "shards").glob("*.safetensors"))) < 2:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no shards written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(BrokenIndexError, match="interrupted"):
        SearchIndex.load(out)
    assert search_main([str(out), "ein hund"]) == 2
    report = build_index(world["model"], out, images=world["photos"], faiss="none", **SMALL)
    assert 0 < report.encoded < len(world["good"]) and report.reused >= 8  # two shards of 4 were kept
    _same_index(out, world["reference"])


def test_two_processes_build_the_one_process_index(world, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    # Same items, same batches; two busy processes may round a matmul's last bit differently
    # (seen at ~6e-8 even with one thread each), so the rows are compared to 1e-6.
    out = tmp_path / "index"
    result = subprocess.run(torchrun(2, str(HELPER), str(world["model"]), str(world["photos"]), str(out)),
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    _same_index(out, world["reference"], atol=1e-6)


def test_incremental_rebuild_encodes_only_what_changed(world, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        shutil.copy2(world["photos"] / f"photo{i}.{'png' if i % 2 else 'jpg'}", photos)
    first = build_index(world["model"], tmp_path / "index", images=photos, **SMALL)
    assert first.encoded == 6
    before = SearchIndex.load(tmp_path / "index")
    rng = np.random.default_rng(7)
    for name in ("new0.png", "new1.png"):
        Image.fromarray(rng.integers(0, 255, (22, 22, 3), dtype=np.uint8)).save(photos / name)
    (photos / "photo0.jpg").unlink()
    Image.fromarray(rng.integers(0, 255, (22, 22, 3), dtype=np.uint8)).save(photos / "photo1.png")
    os.utime(photos / "photo1.png", ns=(0, 12345))  # a changed file with an mtime that surely differs
    second = build_index(world["model"], tmp_path / "index", images=photos, **SMALL)
    assert (second.encoded, second.reused, second.removed, second.count) == (3, 4, 2, 7)
    after = SearchIndex.load(tmp_path / "index")
    assert after.ids == sorted(["new0.png", "new1.png"] + [f"photo{i}.{'png' if i % 2 else 'jpg'}" for i in range(1, 6)])
    for name in ("photo2.jpg", "photo3.png", "photo4.jpg", "photo5.png"):  # unchanged: the stored rows, not re-encoded
        np.testing.assert_array_equal(after.embeddings[after.ids.index(name)], before.embeddings[before.ids.index(name)])
    assert not np.array_equal(after.embeddings[after.ids.index("photo1.png")], before.embeddings[before.ids.index("photo1.png")])
    fresh = build_index(world["model"], tmp_path / "fresh", images=photos, **SMALL)
    assert fresh.count == 7
    cols_a, emb_a = load_rows(tmp_path / "index")
    cols_b, emb_b = load_rows(tmp_path / "fresh")
    assert cols_a == cols_b
    np.testing.assert_allclose(emb_a, emb_b, rtol=0, atol=1e-6)  # other batch neighbours: rounding only
    created = after.metadata["created"]
    third = build_index(world["model"], tmp_path / "index", images=photos, **SMALL)
    assert (third.encoded, third.reused, third.count) == (0, 7, 7)
    assert json.loads((tmp_path / "index" / "metadata.json").read_text())["created"] == created  # left as it was


def test_frame_feature_store_and_dataset_with_captions(world, tmp_path):
    from datasets import Dataset, Features, Image, Value

    torch.manual_seed(1)
    CL2CMCrossModalModel(features_config(text_prefix="query: ")).save_pretrained(tmp_path / "features_model")
    build_processor(build_wordpiece_tokenizer(), "query: ").save_pretrained(tmp_path / "features_model")
    ids = [f"clip{i}" for i in range(5)]
    store = VisualFeatureStore.from_arrays(ids, torch.randn(5, 3, 48), lengths=[1, 2, 3, 3, 2])
    store.save(tmp_path / "frames")
    report = build_index(tmp_path / "features_model", tmp_path / "frames_index", features=tmp_path / "frames", **SMALL)
    assert report.count == 5 and not report.skipped
    index = SearchIndex.load(tmp_path / "frames_index")
    model, _ = load_checkpoint(tmp_path / "features_model")
    np.testing.assert_allclose(index.embeddings, encode_visual(model, store, ids).numpy(), rtol=0, atol=1e-6)
    assert index.ids == ids and index.paths == [None] * 5 and len(index.search("ein hund", top_k=2)) == 2
    with pytest.raises(ValueError, match="precomputed features"):
        index.search_image(world["photos"] / "photo0.jpg")
    # --pictures: feature rows show <id>.<ext> or the first file of <id>/; embeddings are reused.
    pictures = tmp_path / "pictures"
    (pictures / "clip2").mkdir(parents=True)
    for name in ("clip0.png", "clip1.jpg", "clip2/01.png", "clip2/00.png", "clip10.png"):
        (pictures / name).write_bytes(b"shown, not decoded")
    assert index_main([str(tmp_path / "features_model"), "--features", str(tmp_path / "frames"), "--pictures", str(pictures),
                       "--out", str(tmp_path / "frames_index"), "--batch-size", "2", "--num-workers", "0", "--no-progress",
                       "--no-query-encoder"]) == 0
    shown = SearchIndex.load(tmp_path / "frames_index")
    assert shown.paths == [str(pictures / "clip0.png"), str(pictures / "clip1.jpg"), str(pictures / "clip2" / "00.png"), None, None]
    np.testing.assert_array_equal(shown.embeddings, index.embeddings)

    names = ["photo2.jpg", "photo3.png", "grey.png"]
    rows = {"id": ["a", "b", "c"], "image": [str(world["photos"] / n) for n in names], "caption": ["ein hund", "un chat", None]}
    Dataset.from_dict(rows, features=Features({"id": Value("string"), "image": Image(), "caption": Value("string")})) \
        .map(lambda row: row).save_to_disk(str(tmp_path / "dataset"))
    build_index(world["model"], tmp_path / "dataset_index", images=tmp_path / "dataset", **SMALL)
    index = SearchIndex.load(tmp_path / "dataset_index")
    hit = index.search_image(world["photos"] / "photo3.png", top_k=1)[0]
    assert (hit.id, hit.caption) == ("b", "un chat") and index.captions == ["ein hund", "un chat", None]


def test_search_cli_table_json_and_clear_errors(world, tmp_path, capsys):
    assert search_main([str(world["reference"]), "ein roter Hund", "--top", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["rank", "score", "id"] and len(table) == 5
    assert search_main([str(world["reference"]), "ein roter Hund", "--top", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    index = SearchIndex.load(world["reference"])
    assert [h["id"] for h in hits] == [h.id for h in index.search("ein roter Hund", top_k=3)]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["path"].startswith(str(world["photos"])) for h in hits)
    assert search_main([str(world["reference"]), "--image", str(world["photos"] / "photo4.jpg"), "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "photo4.jpg"

    assert search_main([str(tmp_path / "nowhere"), "ein hund"]) == 2
    assert "no such index folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(world["reference"], broken)
    shutil.rmtree(broken / "data")
    assert search_main([str(broken), "ein hund"]) == 2
    assert "not a readable datasets folder" in capsys.readouterr().err
    (broken / "metadata.json").write_text("{")
    assert search_main([str(broken), "ein hund"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert index_main([str(world["model"]), "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such image folder" in capsys.readouterr().err
