"""Multi30K (raw layout) and NRCCR caption readers on small files, and their bad inputs."""

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cl2cm_hf.data import (
    DataFormatError,
    load_multi30k,
    load_nrccr_captions,
    multi30k_pairs,
    multi30k_queries,
    nrccr_pairs,
    nrccr_queries,
)
from cl2cm_hf.data.nrccr import parse_nrccr_line

IMAGES = ["1.jpg", "2.jpg", "3.jpg"]


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def m30k(tmp_path):
    """A three-image Multi30K tree: task 1 en/de, task 2 en x5, with the real naming quirks."""
    root = tmp_path / "multi30k"
    for _task, name in ((1, "task1/image_splits/test_2016_flickr.txt"), (2, "task2/image_splits/test_2016_images.txt")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(IMAGES) + "\n")
    write_gz(root / "task1/raw/test_2016_flickr.en.gz", ["a dog", "a cat", "a car"])
    write_gz(root / "task1/raw/test_2016_flickr.de.gz", ["ein Hund", "eine Katze", "ein Auto"])
    for k in range(1, 6):
        write_gz(root / f"task2/raw/test_2016.{k}.en.gz", [f"dog {k}", f"cat {k}", f"car {k}"])
    (tmp_path / "mt.de.txt").write_text("MT Hund\nMT Katze\nMT Auto\n", encoding="utf-8")
    return root


def test_multi30k_task1_and_task2_queries(m30k):
    de = multi30k_queries(m30k, "test_2016", "de")  # task 1 spelling resolved to test_2016_flickr
    assert de[:] == {"visual_id": IMAGES, "text": ["ein Hund", "eine Katze", "ein Auto"], "lang": ["de"] * 3}
    en = multi30k_queries(m30k, "test_2016_flickr", "en", task=2)
    assert len(en) == 15 and en["visual_id"][:6] == ["1.jpg"] * 5 + ["2.jpg"]
    assert en["text"][:6] == ["dog 1", "dog 2", "dog 3", "dog 4", "dog 5", "cat 1"]
    both = load_multi30k(m30k, "test_2016_flickr", ("en", "de"))
    assert set(both) == {"en", "de"} and len(both["en"]) == 3


def test_multi30k_pairs(m30k):
    human = multi30k_pairs(m30k, "test_2016_flickr", "de")
    assert human[0] == {"visual_id": "1.jpg", "source_text": "a dog", "target_text": "ein Hund", "target_lang": "de", "caption_id": "1.jpg#1"}
    mt = multi30k_pairs(m30k, "test_2016", "de", translations=m30k.parent / "mt.de.txt", task=2)
    assert len(mt) == 15 and mt["target_text"][:5] == ["MT Hund"] * 5 and mt["caption_id"][4] == "1.jpg#5"
    first = multi30k_pairs(m30k, "test_2016", "de", translations=m30k.parent / "mt.de.txt", task=2, first_caption_only=True)
    assert first["source_text"][:] == ["dog 1", "cat 1", "car 1"]
    with pytest.raises(ValueError, match="pass translations="):
        multi30k_pairs(m30k, "test_2016", "de", task=2)


def test_multi30k_short_language_file_names_file_and_counts(m30k):
    bad = write_gz(m30k / "task1/raw/test_2016_flickr.de.gz", ["ein Hund", "eine Katze"])
    with pytest.raises(DataFormatError) as error:
        multi30k_queries(m30k, "test_2016_flickr", "de")
    message = str(error.value)
    assert str(bad) in message and "expected 3 lines" in message and "found 2" in message
    assert "test_2016_flickr.txt" in message  # what fixes the expected count


def test_multi30k_empty_caption_names_line(m30k):
    write_gz(m30k / "task1/raw/test_2016_flickr.de.gz", ["ein Hund", "  ", "ein Auto"])
    with pytest.raises(DataFormatError, match=r"test_2016_flickr\.de\.gz line 2: empty caption"):
        multi30k_queries(m30k, "test_2016_flickr", "de")


def test_multi30k_unknown_split(m30k):
    with pytest.raises(FileNotFoundError, match="no image split"):
        multi30k_queries(m30k, "train", "en")


NRCCR_EN = ["video1#enc#0 a man plays guitar", "video1#enc#1 someone is playing music", "video2#enc#0 a cat sleeps"]
NRCCR_DE = ["video2#enc2de#0 eine Katze schläft", "video1#enc2de#0 ein Mann spielt Gitarre", "video1#enc2de#1 jemand macht Musik"]


def test_nrccr_captions_queries_and_pairs(tmp_path):
    en, de = tmp_path / "en.caption.txt", tmp_path / "de.caption.txt"
    en.write_text("\n".join(NRCCR_EN) + "\n", encoding="utf-8")
    de.write_text("\n".join(NRCCR_DE) + "\n", encoding="utf-8")
    captions = load_nrccr_captions(en)
    assert captions[0] == {"visual_id": "video1", "text": "a man plays guitar", "caption_id": "video1#enc#0"}
    assert nrccr_queries(de, "de")["lang"][:] == ["de"] * 3
    pairs = nrccr_pairs(en, de, "de")  # joined on (visual_id, k) across different tags, source order kept
    assert pairs["target_text"][:] == ["ein Mann spielt Gitarre", "jemand macht Musik", "eine Katze schläft"]
    assert pairs["caption_id"][:] == ["video1#enc#0", "video1#enc#1", "video2#enc#0"]
    de.write_text("\n".join(NRCCR_DE[:2]) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"en\.caption\.txt: caption 'video1#enc#1' has no counterpart"):
        nrccr_pairs(en, de, "de")
    assert len(nrccr_pairs(en, de, "de", on_missing="drop")) == 2


@pytest.mark.parametrize(
    "line, expected",
    [
        ("a man plays guitar", "line 2: line has no caption id"),
        ("video3#enc a man", "line 2: malformed caption id 'video3#enc'"),
        ("video3#enc#x a man", "line 2: malformed caption id 'video3#enc#x'"),
        ("video3#enc#0", "line 2: no caption after the id 'video3#enc#0'"),
        ("", "line 2: empty line"),
    ],
)
def test_nrccr_bad_lines_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "bad.caption.txt"
    path.write_text(f"{NRCCR_EN[0]}\n{line}\n{NRCCR_EN[2]}\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as error:
        load_nrccr_captions(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_nrccr_duplicate_caption_id(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text(f"{NRCCR_EN[0]}\n{NRCCR_EN[0]}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dup\.txt line 2: duplicate caption id 'video1#enc#0' \(first on line 1\)"):
        load_nrccr_captions(path)


_ID = st.text("abcXYZ019_-", min_size=1, max_size=12)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(visual=_ID, tag=_ID, k=st.integers(0, 99), text=st.lists(_TEXT, min_size=1, max_size=4).map(" ".join))
def test_nrccr_line_round_trip(visual, tag, k, text):
    assert parse_nrccr_line(f"{visual}#{tag}#{k} {text}", "x") == (visual, text, f"{visual}#{tag}#{k}", k)
