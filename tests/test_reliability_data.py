"""Bad inputs to every loader and to the feature store (property-based, hypothesis).

Each fault ends in a `DataFormatError`/`ValueError` (or `FileNotFoundError`) whose message names the
file (or store) and the line, row or id, never an unrelated traceback. With ``on_bad_row="skip"``
row-level faults are left out, and every left-out row is counted and listed: loaded + skipped rows
always equal the rows of the file, so nothing is dropped silently.
"""

import gzip
import itertools
import json
import logging
import os

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.data import (
    DataFormatError,
    SkippedRows,
    VisualFeatureStore,
    load_nrccr_captions,
    load_pairs,
    load_queries,
    multi30k_queries,
)
from cl2cm_hf.data.textfiles import read_captions, read_lines
from cl2cm_hf.training.data_sources import build_run_data
from cl2cm_hf.training.recipe import load_config, parse_config

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()

ID = st.text(alphabet="abcdefghij0123456789_", min_size=1, max_size=6)
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"), min_size=1, max_size=20
).filter(lambda t: not is_blank(t))  # a valid caption: not only whitespace or invisible characters
PAIR_ROW = st.fixed_dictionaries({"visual_id": ID, "source_text": TEXT, "target_text": TEXT, "target_lang": st.sampled_from(["de", "fr"])})
BAD_VALUE = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
                      st.dictionaries(ID, st.integers(), max_size=1))


def fresh(folder, name: str):
    """A new file name per example: the datasets cache must never see two versions of one path."""
    return folder / f"{next(_counter)}-{name}"


def assert_names(err: BaseException, path, *parts: str) -> None:
    message = str(err)
    assert str(path) in message, message
    for part in parts:
        assert part in message, message


# --- jsonl pairs --------------------------------------------------------------------------
LINE_FAULTS = ("not json", "wrong type", "empty text", "null text", "latin-1", "not an object", "duplicate caption")


def faulty_jsonl(rows, fault, position, bad_value) -> tuple[bytes, int]:
    """The rows as JSON lines with one faulty line at `position`; returns (bytes, 1-based line)."""
    lines = [json.dumps(dict(r, caption_id=f"c{i}"), ensure_ascii=False).encode() for i, r in enumerate(rows)]
    row = dict(rows[position], caption_id=f"x{position}")
    if fault == "not json":
        line = json.dumps(row).encode()[: -1 - position % 5]
    elif fault == "wrong type":
        line = json.dumps(dict(row, source_text=bad_value)).encode()
    elif fault == "empty text":
        line = json.dumps(dict(row, target_text="  ")).encode()
    elif fault == "null text":
        line = json.dumps(dict(row, target_text=None)).encode()
    elif fault == "latin-1":
        line = json.dumps({"visual_id": "v", "source_text": "café à", "target_text": "t", "target_lang": "de"},
                          ensure_ascii=False).encode("latin-1")
    elif fault == "not an object":
        line = json.dumps([row["visual_id"], row["source_text"]]).encode()
    else:  # duplicate caption
        line = json.dumps(dict(row, caption_id="c0", target_lang=rows[0]["target_lang"])).encode()
        if position == 0:
            position = 1 if len(rows) > 1 else 0
            assume(position)
    lines.insert(position, line)
    return b"\n".join(lines) + b"\n", position + 1


def load_pairs_with_one_bad_line(tmp_path, path, content: bytes, line: int):
    """Write `content` to `path`; loading it must fail naming the file and `line`; loading it with
    on_bad_row=skip returns (pairs, skipped rows)."""
    path.write_bytes(content)
    cache = str(tmp_path / "cache")
    with pytest.raises(DataFormatError) as error:
        load_pairs(path, cache_dir=cache)
    assert_names(error.value, path, f"line {line}")
    skipped = SkippedRows()
    return load_pairs(path, cache_dir=cache, on_bad_row="skip", skipped=skipped), skipped


@FAST
@given(rows=st.lists(PAIR_ROW, min_size=1, max_size=8), fault=st.sampled_from(LINE_FAULTS), data=st.data(), bad_value=BAD_VALUE)
def test_jsonl_line_faults_name_file_and_line_or_are_skipped_and_listed(tmp_path, rows, fault, data, bad_value):
    position = data.draw(st.integers(0, len(rows) - 1))
    content, line = faulty_jsonl(rows, fault, position, bad_value)
    path = fresh(tmp_path, "pairs.jsonl")
    pairs, skipped = load_pairs_with_one_bad_line(tmp_path, path, content, line)
    assert len(pairs) == len(rows) and len(skipped) == 1  # every row accounted for
    (record,) = skipped.records
    assert record["file"] == str(path) and record["line"] == line and record["reason"]
    assert sorted(pairs["source_text"][:]) == sorted(r["source_text"] for r in rows)


@FAST
@given(rows=st.lists(PAIR_ROW, min_size=1, max_size=6), cut=st.floats(0, 1), gz=st.booleans())
def test_truncated_jsonl_or_gzip_fails_naming_the_file_or_loads_complete_lines(tmp_path, rows, cut, gz):
    plain = ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()
    raw = gzip.compress(plain, mtime=0) if gz else plain  # mtime 0: the same bytes at every call
    raw = raw[: int(len(raw) * cut)]
    path = fresh(tmp_path, "pairs.jsonl.gz" if gz else "pairs.jsonl")
    path.write_bytes(raw)
    skipped = SkippedRows()
    try:
        pairs = load_pairs(path, cache_dir=str(tmp_path / "cache"), on_bad_row="skip", skipped=skipped)
    except DataFormatError as err:  # a truncated gzip, or nothing left
        assert_names(err, path)
        return
    assert not gz or raw == gzip.compress(plain, mtime=0)  # a cut gzip never loads
    text = plain if gz else raw
    # Complete lines load; a line cut in the middle is either still valid JSON or listed as skipped.
    assert len(pairs) + len(skipped) == len([t for t in text.decode("utf-8", "replace").split("\n") if t.strip()])
    assert all(r["file"] == str(path) and "line" in r for r in skipped.records)


@FAST
@given(blob=st.binary(min_size=1, max_size=300), suffix=st.sampled_from(["jsonl", "jsonl.gz", "csv", "tsv", "parquet"]))
def test_random_bytes_in_any_table_format_fail_naming_the_file(tmp_path, blob, suffix):
    path = fresh(tmp_path, f"q.{suffix}")
    path.write_bytes(blob)
    for mode in ("error", "skip"):
        try:
            load_queries(path, cache_dir=str(tmp_path / "cache"), on_bad_row=mode)
        except DataFormatError as err:
            assert_names(err, path)
        else:  # random bytes that happen to form a valid table: only possible for csv/tsv-like text
            assert suffix in ("csv", "tsv")


@FAST
@given(rows=st.lists(PAIR_ROW, min_size=1, max_size=6), data=st.data(),
       fault=st.sampled_from(["extra field", "missing field", "empty field", "latin-1"]))
def test_csv_record_faults_name_file_and_line_or_are_listed(tmp_path, rows, data, fault):
    position = data.draw(st.integers(0, len(rows) - 1))
    header = "visual_id,source_text,target_text,target_lang"
    clean = [dict(r, source_text=r["source_text"].replace('"', "'")) for r in rows]
    records = [",".join('"' + r[k] + '"' for k in header.split(",")).encode() for r in clean]
    bad = clean[position]
    if fault == "extra field":
        line = f'"{bad["visual_id"]}","a","b","de","surplus"'.encode()
    elif fault == "missing field":
        line = f'"{bad["visual_id"]}","a","b"'.encode()
    elif fault == "empty field":
        line = f'"{bad["visual_id"]}","","b","de"'.encode()
    else:
        line = f'"{bad["visual_id"]}","café","b","de"'.encode("latin-1")
    records.insert(position, line)
    path = fresh(tmp_path, "pairs.csv")
    content = header.encode() + b"\n" + b"\n".join(records) + b"\n"
    pairs, skipped = load_pairs_with_one_bad_line(tmp_path, path, content, position + 2)
    assert len(pairs) == len(rows) and [r["line"] for r in skipped.records] == [position + 2]


def test_parquet_wrong_column_type_and_nulls(tmp_path):
    path = tmp_path / "q.parquet"
    Dataset.from_dict({"visual_id": ["a", "b"], "text": [1, 2], "lang": ["de", "de"]}).to_parquet(path)
    for mode in ("error", "skip"):  # a whole column of the wrong type: no row can be trusted
        with pytest.raises(DataFormatError, match=r"q\.parquet: column 'text' has type .*int.*expected strings"):
            load_queries(path, cache_dir=str(tmp_path / "cache"), on_bad_row=mode)
    path = tmp_path / "n.parquet"
    Dataset.from_dict({"visual_id": ["a", "b", "c"], "text": ["x", None, "y"], "lang": ["de"] * 3}).to_parquet(path)
    with pytest.raises(DataFormatError, match=r"n\.parquet row 1 \(visual_id='b'\): empty text in column 'text'"):
        load_queries(path, cache_dir=str(tmp_path / "cache"))
    skipped = SkippedRows()
    assert load_queries(path, cache_dir=str(tmp_path / "cache"), on_bad_row="skip", skipped=skipped)["visual_id"][:] == ["a", "c"]
    assert skipped.records[0]["row"] == 1


def test_rows_whose_visual_id_is_not_in_the_store(tmp_path):
    store = VisualFeatureStore.from_arrays(["a", "b"], np.zeros((2, 3), dtype=np.float32), name="store S")
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"visual_id": v, "text": "t", "lang": "de"}) + "\n" for v in ["a", "zz", "b"]))
    with pytest.raises(DataFormatError, match=r"q\.jsonl line 2 \(visual_id='zz'\): visual_id 'zz' is not in store S"):
        load_queries(path, cache_dir=str(tmp_path / "cache"), visual_ids=store)
    skipped = SkippedRows()
    assert len(load_queries(path, cache_dir=str(tmp_path / "cache"), visual_ids=store, on_bad_row="skip", skipped=skipped)) == 2
    assert skipped.records[0]["visual_id"] == "zz"


def test_every_row_bad_is_an_error_even_when_skipping(tmp_path, caplog):
    path = tmp_path / "q.jsonl"
    path.write_text('{"visual_id": "a", "text": "", "lang": "de"}\nnot json\n')
    with caplog.at_level(logging.WARNING), pytest.raises(DataFormatError, match=r"q\.jsonl: no valid rows \(2 bad rows skipped\)"):
        load_queries(path, cache_dir=str(tmp_path / "cache"), on_bad_row="skip")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=r"e\.jsonl: no valid rows"):
        load_queries(empty, cache_dir=str(tmp_path / "cache"))


# --- line-oriented text files (Multi30K, NRCCR, id lists) ------------------------------------
@FAST
@given(lines=st.lists(TEXT.map(lambda t: t.replace("\r", " ").replace("\n", " ")), min_size=1, max_size=8), cut=st.floats(0, 0.99))
def test_truncated_gzip_caption_file_names_the_file(tmp_path, lines, cut):
    raw = gzip.compress("".join(line + "\n" for line in lines).encode())
    path = fresh(tmp_path, "test.de.gz")
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(DataFormatError, match="not a complete gzip file") as error:
        read_lines(path)
    assert_names(error.value, path)


@FAST
@given(lines=st.lists(TEXT, min_size=1, max_size=8))
def test_caption_lines_survive_any_unicode_and_keep_their_alignment(tmp_path, lines):
    """Only \\n, \\r\\n and \\r end a line: U+2028, form feeds and the like stay inside the caption."""
    lines = [line.replace("\r", " ").replace("\n", " ") for line in lines]
    path = fresh(tmp_path, "c.txt")
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    assert read_lines(path) == lines
    if not any(is_blank(line) for line in lines):  # blank: whitespace and invisible characters only
        assert read_captions(path, expected=len(lines)) == [line.strip() for line in lines]


@FAST
@given(lines=st.lists(st.text(alphabet="abc d", min_size=1, max_size=8).filter(str.strip), min_size=2, max_size=6), data=st.data())
def test_wrong_encoding_names_file_and_line(tmp_path, lines, data):
    position = data.draw(st.integers(0, len(lines) - 1))
    encoded = [line.encode() for line in lines]
    encoded[position] += " Straße".encode("latin-1")
    path = fresh(tmp_path, "c.txt")
    path.write_bytes(b"\n".join(encoded) + b"\n")
    with pytest.raises(DataFormatError, match=f"line {position + 1}: not valid UTF-8") as error:
        read_captions(path)
    assert_names(error.value, path)


@FAST
@given(blob=st.binary(min_size=1, max_size=200))
def test_random_bytes_as_nrccr_file_fail_naming_file_and_line_or_parse(tmp_path, blob):
    path = fresh(tmp_path, "cap.txt")
    path.write_bytes(blob)
    try:
        captions = load_nrccr_captions(path)
    except DataFormatError as err:
        assert_names(err, path)
        assert "line" in str(err) or "no captions" in str(err) or "gzip" in str(err)
    else:
        assert len(captions) >= 1


@FAST
@given(n_images=st.integers(1, 5), n_captions=st.integers(0, 7))
def test_mismatched_line_counts_name_both_files(tmp_path, n_images, n_captions):
    assume(n_images != n_captions)
    root = fresh(tmp_path, "multi30k")
    (root / "task1/image_splits").mkdir(parents=True)
    (root / "task1/raw").mkdir(parents=True)
    (root / "task1/image_splits/test.txt").write_text("".join(f"{i}.jpg\n" for i in range(n_images)))
    with gzip.open(root / "task1/raw/test.de.gz", "wt", encoding="utf-8") as handle:
        handle.write("".join(f"caption {i}\n" for i in range(n_captions)))
    with pytest.raises(DataFormatError, match=f"expected {n_images} lines .*found {n_captions}") as error:
        multi30k_queries(root, "test", "de")
    assert_names(error.value, root / "task1/raw/test.de.gz", str(root / "task1/image_splits/test.txt"))


# --- the visual feature store -----------------------------------------------------------------
def saved_store(folder, n: int = 6, frames: int = 0):
    rng = np.random.default_rng(n)
    shape = (n, frames, 4) if frames else (n, 4)
    lengths = rng.integers(1, frames + 1, n) if frames else None
    store = VisualFeatureStore.from_arrays([f"v{i}" for i in range(n)], rng.standard_normal(shape).astype(np.float32), lengths)
    return store.save(folder)


@FAST
@given(cut=st.floats(0, 0.999), mmap=st.booleans(), garbage=st.booleans())
def test_truncated_or_random_safetensors_store_names_the_file(tmp_path, cut, mmap, garbage):
    folder = saved_store(fresh(tmp_path, "store"))
    tensors = folder / "features.safetensors"
    raw = tensors.read_bytes()
    tensors.write_bytes(os.urandom(max(1, int(len(raw) * cut))) if garbage else raw[: int(len(raw) * cut)])
    with pytest.raises(DataFormatError) as error:
        VisualFeatureStore.load(folder, mmap=mmap)
    assert_names(error.value, tensors)


@FAST
@given(ids=st.one_of(st.just("{not json"), st.just('{"ids": 5}'), st.just("[[1], [2]]"), st.just('"abc"'),
                     st.lists(ID, min_size=1, max_size=9).map(json.dumps), st.binary(min_size=1, max_size=30)))
def test_bad_ids_file_names_the_file_or_the_store(tmp_path, ids):
    folder = saved_store(fresh(tmp_path, "store"))
    (folder / "ids.json").write_bytes(ids if isinstance(ids, bytes) else ids.encode())
    try:
        store = VisualFeatureStore.load(folder)
    except (ValueError, DataFormatError) as err:  # DataFormatError is a ValueError
        assert str(folder) in str(err), str(err)
    else:
        assert len(store) == 6 and len(set(store.ids)) == 6  # six distinct ids: a valid file


@FAST
@given(n=st.integers(2, 8), data=st.data(), frames=st.sampled_from([0, 3]))
def test_nan_rows_and_duplicate_ids_rejected_at_load_or_skipped_and_listed(tmp_path, n, data, frames):
    folder = saved_store(fresh(tmp_path, "store"), n, frames)
    store = VisualFeatureStore.load(folder, mmap=False)
    array = store.lookup(store.ids)[0].numpy().copy()
    lengths = store.lengths
    nan_rows = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for row in nan_rows:
        array[(row, 0, 0) if frames else (row, 0)] = np.nan
    ids = store.ids
    dup = data.draw(st.one_of(st.none(), st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] < p[1])))
    if dup:
        ids[dup[1]] = ids[dup[0]]
    np.save(folder / "f.npy", array)
    bad_rows = set(nan_rows) | ({dup[1]} if dup else set())
    if bad_rows:
        with pytest.raises(ValueError) as error:  # at load, not at the first batch that reads the row
            VisualFeatureStore.from_npy(folder / "f.npy", ids, lengths, on_bad_row="error")
        assert str(folder / "f.npy") in str(error.value) and "row" in str(error.value)
    skipped = SkippedRows()
    try:
        kept = VisualFeatureStore.from_npy(folder / "f.npy", ids, lengths, on_bad_row="skip", skipped=skipped)
    except DataFormatError as err:
        assert "no valid rows" in str(err) and len(skipped) == n
        return
    assert {r["row"] for r in skipped.records} == bad_rows  # the first of two duplicates is kept
    assert len(kept) + len(skipped) == n
    assert np.isfinite(kept.lookup(kept.ids)[0].numpy()).all()


def test_store_row_and_id_counts_must_match(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((6, 4), dtype=np.float32))
    for mode in (None, "error", "skip"):
        with pytest.raises(ValueError, match=r"f\.npy: 2 ids but 6 feature rows"):
            VisualFeatureStore.from_npy(tmp_path / "f.npy", ["a", "b"], on_bad_row=mode)


def test_store_ids_from_another_save_are_caught(tmp_path):
    """A save cut between its two files (new features, old ids) would pair rows with the wrong ids."""
    folder = saved_store(tmp_path / "store")
    other = VisualFeatureStore.from_arrays([f"v{i}" for i in reversed(range(6))], np.zeros((6, 4), dtype=np.float32))
    (folder / "ids.json").write_text(json.dumps({"ids": other.ids}))  # same count, other order
    with pytest.raises(DataFormatError, match=r"ids\.json: these ids are not the ones features\.safetensors was saved with"):
        VisualFeatureStore.load(folder)


def test_truncated_npy_store_names_the_file(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((5, 4), dtype=np.float32))
    raw = (tmp_path / "f.npy").read_bytes()
    (tmp_path / "f.npy").write_bytes(raw[: len(raw) - 7])
    with pytest.raises(DataFormatError, match=r"f\.npy: not a readable \.npy array"):
        VisualFeatureStore.from_npy(tmp_path / "f.npy", list("abcde"))


# --- a run's data: on_bad_row from the recipe, skipped rows listed in the run folder ------------
def _files_run(tmp_path, on_bad_row: str):
    store = VisualFeatureStore.from_arrays([f"v{i}" for i in range(8)], np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    store.save(tmp_path / "store")
    pairs = [{"visual_id": f"v{i % 8}", "source_text": f"a dog {i}", "target_text": f"ein hund {i}", "target_lang": "de"} for i in range(40)]
    lines = [json.dumps(p) for p in pairs]
    lines[5] = "{broken"
    lines[9] = json.dumps(dict(pairs[9], visual_id="v99"))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    queries = "\n".join(json.dumps({"visual_id": f"v{i}", "text": f"hund {i}", "lang": "de"}) for i in range(8))
    (tmp_path / "val.jsonl").write_text(queries + '\n{"visual_id": "v1", "text": "", "lang": "de"}\n')
    (tmp_path / "test.jsonl").write_text(queries + "\n")
    values = load_config(None, [
        "--dataset", "files", "--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "val.jsonl"),
        "--test_file", str(tmp_path / "test.jsonl"), "--features_file", str(tmp_path / "store"), "--target_langs", "[de]",
        "--tokenizer_vocab_size", "100", "--output_dir", str(tmp_path / "run"), "--on_bad_row", on_bad_row,
        "--report_to", "none", "--use_cpu", "true",
    ])
    model_args, data_args, _, training_args = parse_config(values)
    return build_run_data(data_args, model_args, training_args)


def test_run_data_on_bad_row_error_names_file_and_line(tmp_path):
    with pytest.raises(DataFormatError, match=r"train\.jsonl line 6: not valid JSON"):
        _files_run(tmp_path, "error")
    assert not (tmp_path / "run" / "skipped_rows.jsonl").exists()


def test_run_data_on_bad_row_skip_lists_rows_in_run_folder(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = _files_run(tmp_path, "skip")
    listed = [json.loads(line) for line in (tmp_path / "run" / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["file"].rsplit("/", 1)[-1], r["line"]) for r in listed] == [("train.jsonl", 6), ("train.jsonl", 10), ("val.jsonl", 9)]
    assert "visual_id 'v99' is not in feature store" in listed[1]["reason"]
    assert len(data.train_pairs) + len(data.validation_pairs) == 38 and len(data.validation_queries) == 8
    assert "skipped 3 bad row(s) in total" in caplog.text


def test_on_bad_row_setting_is_checked():
    with pytest.raises(ValueError, match="on_bad_row='drop'"):
        parse_config(load_config(None, ["--on_bad_row", "drop"]))


# --- whether the settings fit the data: validation split, feature formats, batch and group sizes ---
def _files_data(tmp_path, train_rows: int = 40, features: str = "store", *extra):
    """A `dataset: files` run's data over `train_rows` pairs; `features`: "store" (a saved store folder)
    or "npy" (an array plus an id list)."""
    ids = [f"v{i}" for i in range(8)]
    array = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    VisualFeatureStore.from_arrays(ids, array).save(tmp_path / "store")
    np.save(tmp_path / "features.npy", array)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    pairs = [{"visual_id": f"v{i % 8}", "source_text": f"a dog {i}", "target_text": f"ein hund {i}", "target_lang": "de"}
             for i in range(train_rows)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    queries = "".join(json.dumps({"visual_id": i, "text": f"hund {i}", "lang": "de"}) + "\n" for i in ids)
    (tmp_path / "val.jsonl").write_text(queries)
    (tmp_path / "test.jsonl").write_text(queries)
    where = {"store": ["--features_file", str(tmp_path / "store")],
             "npy": ["--features_file", str(tmp_path / "features.npy"), "--features_ids_file", str(tmp_path / "ids.txt")]}
    values = load_config(None, [
        "--dataset", "files", "--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "val.jsonl"),
        "--test_file", str(tmp_path / "test.jsonl"), *where.get(features, ["--features_file", features]), "--target_langs", "[de]",
        "--tokenizer_vocab_size", "100", "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--use_cpu", "true", *extra,
    ])
    model_args, data_args, cl2cm_args, training_args = parse_config(values)
    return build_run_data(data_args, model_args, training_args), cl2cm_args, training_args


def test_a_train_file_too_small_for_its_validation_split_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"train\.jsonl: 1 training row\(s\) are too few for a validation split of 5%"):
        _files_data(tmp_path, train_rows=1)
    data, _, _ = _files_data(tmp_path, train_rows=2)
    assert (len(data.train_pairs), len(data.validation_pairs)) == (1, 1)


def test_a_npy_features_file_works_with_dataset_files_and_other_formats_are_named(tmp_path):
    data, _, _ = _files_data(tmp_path, features="npy")
    assert len(data.features) == 8 and "v3" in data.features
    with pytest.raises(ValueError, match=r"features\.npy' is a \.npy array: set features_ids_file"):
        _files_data(tmp_path, 40, str(tmp_path / "features.npy"))
    (tmp_path / "features.pt").write_bytes(b"\x80\x02not a store")
    with pytest.raises(ValueError, match=r"features\.pt': expected a feature store folder .*\.npy array with features_ids_file"):
        _files_data(tmp_path, 40, str(tmp_path / "features.pt"))


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--per_device_train_batch_size", "64"], r"per_device_train_batch_size=64 x 1 process\(es\) = 64 rows per step is "
                                                   r"larger than the data: stage 1 trains on 38 pairs"),
        (["--stage", "cm", "--lambda_kt", "0", "--per_device_train_batch_size", "39"], "stage 2 trains on 38 pairs"),
        (["--per_device_train_batch_size", "20", "--kt_neighbour_group_size", "10", "--precompute_teacher", "true"],
         "kt_neighbour_group_size=10 is larger than the data: train has 8 training items"),
    ],
)
def test_a_batch_or_neighbour_group_larger_than_the_data_is_refused_naming_it(tmp_path, extra, expected):
    from cl2cm_hf.training.data_sources import check_fits_data

    data, cl2cm_args, training_args = _files_data(tmp_path, 40, "store", *extra)
    with pytest.raises(ValueError, match=expected):
        check_fits_data(data, cl2cm_args, training_args)
    data, cl2cm_args, training_args = _files_data(tmp_path, 40, "store", "--per_device_train_batch_size", "38")
    check_fits_data(data, cl2cm_args, training_args)  # a batch of all the pairs fits
