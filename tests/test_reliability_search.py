"""The search index at its edges (issue 19): ``cl2cm-index --out`` never removes what it did not
write, an index refuses a model that is not its own, every option and argument is range-checked,
odd file names and symlinked folders never sink a build, and ``--compare hash`` sees rewrites that
keep size and mtime. A tiny random checkpoint, offline, CPU."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import backbone_config, build_wordpiece_tokenizer

from cl2cm_hf import CL2CMCrossModalModel, build_processor
from cl2cm_hf.cli.app import main as app_main
from cl2cm_hf.cli.app import model_info
from cl2cm_hf.cli.index import main as index_main
from cl2cm_hf.cli.search import main as search_main
from cl2cm_hf.search import ModelMismatchError, OutFolderError, SearchIndex, UnknownQueryError, build_index

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

SMALL = {"batch_size": 2, "chunk_size": 4, "num_workers": 0, "progress": False, "faiss": "none", "query_encoder": False}
CLI_SMALL = ["--batch-size", "2", "--num-workers", "0", "--no-progress", "--faiss", "none", "--no-query-encoder"]


def _save_model(folder: Path, seed: int) -> Path:
    from transformers import ViTImageProcessorPil

    torch.manual_seed(seed)
    CL2CMCrossModalModel(backbone_config(text_prefix="query: ")).save_pretrained(folder)
    build_processor(build_wordpiece_tokenizer(), "query: ", ViTImageProcessorPil(size={"height": 16, "width": 16})) \
        .save_pretrained(folder)
    return folder


def _picture(path: Path, seed: int) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links not followed) with its bytes: what must stay untouched."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _embedding(index_folder: Path, item_id: str) -> np.ndarray:
    index = SearchIndex.load(index_folder)
    return index.embeddings[index.ids.index(item_id)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_edges")
    model = _save_model(root / "model", 0)
    photos = root / "photos"
    photos.mkdir()
    for i in range(4):
        _picture(photos / f"photo{i}.png", i)
    build_index(model, root / "index", images=photos, **SMALL)
    return {"root": root, "model": model, "photos": photos, "index": root / "index"}


def _index_cli(world, out, *extra) -> list[str]:
    return [str(world["model"]), "--images", str(world["photos"]), "--out", str(out), *CLI_SMALL, *extra]


# --- --out never removes what cl2cm-index did not write -------------------------------------------
def test_out_refuses_a_folder_of_user_files_and_leaves_it_untouched(world, tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("four years of work")
    (user / "sub" / "data.csv").write_text("a,b\n")
    before = _snapshot(user)
    for extra in ([], ["--overwrite"]):
        assert index_main(_index_cli(world, user, *extra)) == 2
        err = capsys.readouterr().err
        assert str(user) in err and "did not write" in err and "thesis.txt" in err and "\n" == err[-1] and err.count("\n") == 1
        assert _snapshot(user) == before
    with pytest.raises(OutFolderError, match="did not write"):
        build_index(world["model"], user, images=world["photos"], **SMALL)
    assert _snapshot(user) == before


def test_out_refuses_the_input_folder_or_any_folder_above_or_inside_it(world, tmp_path, capsys):
    before = _snapshot(world["photos"])
    for out, why in ((world["photos"], "is --images folder"), (world["root"], "is above --images folder"),
                     (world["photos"] / "index", "is inside --images folder"), (Path("/"), "is above")):
        assert index_main(_index_cli(world, out)) == 2, out
        err = capsys.readouterr().err
        assert why in err and str(world["photos"]) in err, err
    assert _snapshot(world["photos"]) == before and not (world["photos"] / "index").exists()
    # A feature store with --pictures: the pictures folder is protected the same way.
    with pytest.raises(OutFolderError, match="inside --pictures folder"):
        build_index(world["model"], world["photos"] / "x", features=tmp_path, pictures=world["photos"], **SMALL)


def test_out_refuses_the_checkpoint_folder_and_folders_inside_it(world, capsys):
    before = _snapshot(world["model"])
    for out, why in ((world["model"], "is the checkpoint (model) folder"), (world["model"] / "index", "is inside the checkpoint")):
        assert index_main(_index_cli(world, out)) == 2
        assert why in capsys.readouterr().err
    assert _snapshot(world["model"]) == before


def test_out_refuses_an_index_holding_a_user_file_even_with_overwrite(world, tmp_path, capsys):
    out = tmp_path / "index"
    shutil.copytree(world["index"], out)
    (out / "notes.md").write_text("mine")
    (out / "data" / "extra.txt").write_text("mine too")
    for extra in ([], ["--overwrite"]):
        assert index_main(_index_cli(world, out, *extra)) == 2
        err = capsys.readouterr().err
        assert "notes.md" in err and "data/extra.txt" in err
    assert (out / "notes.md").read_text() == "mine" and (out / "data" / "extra.txt").read_text() == "mine too"


def test_an_index_of_another_input_is_replaced_only_with_overwrite(world, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    _picture(other / "x.png", 9)
    out = tmp_path / "index"
    out.mkdir()  # an empty folder is fine
    assert index_main(_index_cli(world, out)) == 0
    assert index_main(_index_cli(world, out)) == 0  # the same input again: an update in place
    capsys.readouterr()
    argv = [str(world["model"]), "--images", str(other), "--out", str(out), *CLI_SMALL]
    assert index_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and SearchIndex.load(out).ids == [f"photo{i}.png" for i in range(4)]
    assert index_main(argv + ["--overwrite"]) == 0
    assert SearchIndex.load(out).ids == ["x.png"]


def test_a_killed_first_build_is_recognised_as_an_index(world, tmp_path, monkeypatch):
    import cl2cm_hf.search.index_build as builder

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while encoding")

    out = tmp_path / "index"
    monkeypatch.setattr(builder, "encode_chunks", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(world["model"], out, images=world["photos"], **SMALL)
    monkeypatch.undo()
    assert (out / ".cl2cm-index").is_file()  # marked before any shard: the rerun may write there
    assert build_index(world["model"], out, images=world["photos"], **SMALL).count == 4


# --- the model an index is searched with -----------------------------------------------------------
def test_another_model_is_refused_naming_both_unless_allowed(world, tmp_path, capsys):
    from cl2cm_hf.search import load_checkpoint

    other = _save_model(tmp_path / "other_model", 1)
    model, processor = load_checkpoint(other)
    with pytest.raises(ModelMismatchError) as caught:
        SearchIndex.load(world["index"], model=model, processor=processor)
    message = str(caught.value)
    assert str(world["model"]) in message and str(other) in message and "allow_model_mismatch" in message
    index = SearchIndex.load(world["index"], model=model, processor=processor, allow_model_mismatch=True)
    assert index.model_mismatch and "Warning" in model_info(index.metadata, index.model_mismatch)
    same, same_processor = load_checkpoint(world["model"])
    assert SearchIndex.load(world["index"], model=same, processor=same_processor).model_mismatch is None

    # The index's own checkpoint rewritten since the build: refused, named, and no "pass model=" advice.
    changed = tmp_path / "changed"
    shutil.copytree(world["index"], changed)
    shutil.copytree(other, tmp_path / "moved_model")
    metadata = json.loads((changed / "metadata.json").read_text())
    metadata["model"] = str(tmp_path / "moved_model")
    (changed / "metadata.json").write_text(json.dumps(metadata))
    assert search_main([str(changed), "ein hund"]) == 2
    err = capsys.readouterr().err
    assert "built with" in err and "--allow-model-mismatch" in err and "model=" not in err.replace("allow_model_mismatch=", "")
    assert search_main([str(changed), "ein hund", "--allow-model-mismatch"]) == 0
    assert "warning" in capsys.readouterr().err


def test_the_page_names_its_model_without_a_local_path(world):
    line = model_info(json.loads((world["index"] / "metadata.json").read_text()))
    assert "`model`" in line and str(world["root"]) not in line
    card = world["root"] / "card_model"
    shutil.copytree(world["model"], card)
    (card / "README.md").write_text("---\nmodel_name: CL2CM demo (de, fr)\n---\n# card\n")
    assert "`CL2CM demo (de, fr)`" in model_info({"model": str(card)})


# --- options and arguments --------------------------------------------------------------------------
def test_search_arguments_are_range_checked_and_named(world):
    index = SearchIndex.load(world["index"])
    for bad in (0, -1, 5, 10**12, 2.5, True, "3"):
        with pytest.raises(ValueError, match="top_k"):
            index.search("ein hund", top_k=bad)
        with pytest.raises(ValueError, match="top_k"):
            index.search_image(world["photos"] / "photo0.png", top_k=bad)
    assert len(index.search("ein hund")) == 4  # the default: 5, or every item of a smaller index
    for bad in ("", "   ", "\u200b"):
        with pytest.raises(ValueError, match="empty"):
            index.search(bad)
    for bad in (None, 5, b"hund"):
        with pytest.raises(ValueError, match="query must be a text"):
            index.search(bad)
    with pytest.raises(ValueError, match="exact"):
        index.search("ein hund", exact="yes")
    for bad in (None, 3, np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="search_image"):
            index.search_image(bad)
    with pytest.raises(ValueError, match="nowhere.png: file not found"):
        index.search_image(world["root"] / "nowhere.png")


def test_a_query_of_only_unknown_words_says_so(world, capsys):
    index = SearchIndex.load(world["index"])
    with pytest.raises(UnknownQueryError, match=r"no word .* known .*\[UNK\]"):
        index.search("zzqx wqpv")
    assert index.search("zzqx hund")  # one known word is enough
    assert search_main([str(world["index"]), "zzqx wqpv"]) == 2
    assert "[UNK]" in capsys.readouterr().err


@pytest.mark.parametrize("tool, argv, option", [
    ("index", ["--batch-size", "0"], "--batch-size"), ("index", ["--batch-size", "99999999"], "--batch-size"),
    ("index", ["--num-workers", "-1"], "--num-workers"), ("index", ["--chunk-size", "0"], "--chunk-size"),
    ("index", ["--max-pixels", "0"], "--max-pixels"), ("index", ["--batch-size", "2.5"], "--batch-size"),
    ("index", ["--device", "nonsense"], "device"), ("index", ["--compare", "size"], "--compare"),
    ("search", ["--top", "0"], "--top"), ("search", ["--top", "1000000000"], "--top"), ("search", ["--top", "x"], "--top"),
    ("search", ["--top", "7"], "--top 7"),
    ("app", ["--port", "0"], "--port"), ("app", ["--port", "70000"], "--port"), ("app", ["--top", "-3"], "--top"),
    ("app", ["--host", " "], "--host"), ("app", ["--top", "9"], "--top 9"),
])
def test_every_option_is_range_checked_and_named(world, tmp_path, capsys, tool, argv, option):
    if tool == "index":
        argv = [str(world["model"]), "--images", str(world["photos"]), "--out", str(tmp_path / "x"), "--no-progress", *argv]
        run = index_main
    elif tool == "search":
        argv, run = [str(world["index"]), "ein hund", *argv], search_main
    else:
        argv, run = [str(world["index"]), *argv], app_main
    try:
        code = run(argv)
    except SystemExit as stop:  # argparse's refusal: usage and one error line
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and option in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_build_options_are_checked_in_the_api_too(world, tmp_path):
    for key, bad in (("batch_size", 0), ("num_workers", -1), ("chunk_size", 0), ("max_pixels", 0), ("batch_size", 1.5),
                     ("faiss", "hnswx"), ("compare", "size"), ("device", "nonsense")):
        with pytest.raises(ValueError, match=key):
            build_index(world["model"], tmp_path / "x", images=world["photos"], **{**SMALL, key: bad})
    assert not (tmp_path / "x").exists()


def test_a_build_that_indexes_nothing_exits_2(world, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("not a picture")
    (notes / "b.jpg").write_bytes(b"")
    argv = [str(world["model"]), "--images", str(notes), "--out", str(tmp_path / "index"), *CLI_SMALL]
    assert index_main(argv) == 2
    assert "nothing was indexed: all 2 items were skipped" in capsys.readouterr().err


# --- file names, symlinked folders, rewrites ---------------------------------------------------------
def test_odd_file_names_are_skipped_and_printed_escaped(world, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _picture(photos / "good é.png", 0)
    odd = [b"latin\xe9.png", b"two\nlines.png", b"red\x1b[31mtext.png", b"bell\x07.png"]
    for name in odd:
        _picture(Path(os.fsdecode(bytes(photos) + b"/" + name)), 1)
    argv = [str(world["model"]), "--images", str(photos), "--out", str(tmp_path / "index"), *CLI_SMALL]
    assert index_main(argv) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[31m" in out and "latin\\xe9.png" in out and "two\\nlines" in out
    skipped = [line for line in out.splitlines() if line.startswith("  skipped")]
    assert len(skipped) == 4 and all("file name" in line for line in skipped)
    report = json.loads((tmp_path / "index" / "report.json").read_text(encoding="utf-8"))
    assert len(report["skipped"]) == 4
    assert SearchIndex.load(tmp_path / "index").ids == ["good é.png"]


def test_symlinked_folders_are_followed_once_and_loops_are_skipped(world, tmp_path):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    _picture(photos / "a.png", 0)
    _picture(elsewhere / "b.png", 1)
    (photos / "linked").symlink_to(elsewhere)
    (photos / "again").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(photos)
    (photos / "pic.png").symlink_to(elsewhere / "b.png")
    (photos / "sub").mkdir()
    _picture(photos / "sub" / "c.png", 2)
    (photos / "aa_link").symlink_to(photos / "sub")  # listed before the real folder it points to
    report = build_index(world["model"], tmp_path / "index", images=photos, **SMALL)
    index = SearchIndex.load(tmp_path / "index")
    assert index.ids == ["a.png", "again/b.png", "pic.png", "sub/c.png"]
    assert index.paths[index.ids.index("pic.png")] == str(elsewhere / "b.png")  # the link's target, resolved
    reasons = {entry["id"]: entry["reason"] for entry in report.skipped}
    assert set(reasons) == {"aa_link/", "again/loop/", "linked/"} and all("already indexed" in r for r in reasons.values())


def test_compare_hash_sees_a_rewrite_that_keeps_size_and_mtime(world, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    target = photos / "photo.bmp"  # uncompressed: another picture of the same size has the same bytes count
    rng = np.random.default_rng(3)

    def write() -> None:
        stat = target.stat() if target.exists() else None
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(target)
        if stat:
            assert target.stat().st_size == stat.st_size
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    write()
    _picture(photos / "other.png", 1)
    for compare, encoded in (("mtime", 0), ("hash", 1)):  # the default keeps the stale embedding, hash does not
        out = tmp_path / compare
        build_index(world["model"], out, images=photos, compare=compare, **SMALL)
        before = _embedding(out, "photo.bmp")
        write()
        assert build_index(world["model"], out, images=photos, compare=compare, **SMALL).encoded == encoded, compare
        assert np.array_equal(_embedding(out, "photo.bmp"), before) == (compare == "mtime")
    assert json.loads((tmp_path / "hash" / "metadata.json").read_text())["compare"] == "hash"
    with pytest.raises(SystemExit):
        index_main(["--help"])
    assert "mtime (default)" in " ".join(capsys.readouterr().out.split())
