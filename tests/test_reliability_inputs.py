"""Data inputs that would silently change results: CSV/TSV quoting (one record per line, explicit
rules in cl2cm_hf/data/tables.py), duplicate header columns, language codes, invisible captions,
float video lengths and zero-width features."""

import json
import random

import numpy as np
import pytest

from cl2cm_hf.data.badrows import SkippedRows
from cl2cm_hf.data.features import VisualFeatureStore
from cl2cm_hf.data.schemas import DataFormatError, make_queries
from cl2cm_hf.data.tables import load_pairs, load_queries
from cl2cm_hf.data.textfiles import read_captions


def _load(path, mode="skip"):
    skipped = SkippedRows()
    return load_queries(path, on_bad_row=mode, skipped=skipped), skipped


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")])
def test_csv_quoting_rules_keep_every_line_apart(tmp_path, fmt, sep):
    path = tmp_path / f"queries.{fmt}"
    lines = [
        f'v1{sep}"Quoted" dog{sep}de',         # quotes inside the text: kept
        f'v2{sep}a "stray quote{sep}de',       # a quote in the middle: an ordinary character
        f'v3{sep}plain{sep}de',
        f'v4{sep}"a{sep} b"{sep}de',           # a quoted field: the separator inside is text
        f'v5{sep}"he said ""hi"""{sep}de',     # "" inside a quoted field is one quote
        f'v6{sep}"never closed{sep}de',        # opens a quote that is never closed: a bad row
        f'v7{sep}after{sep}de',
    ]
    path.write_text(f"visual_id{sep}text{sep}lang\n" + "\n".join(lines) + "\n")
    rows, skipped = _load(path)
    assert rows["text"] == ['"Quoted" dog', 'a "stray quote', "plain", f"a{sep} b", 'he said "hi"', "after"]
    assert [(r["line"], "quote that is not closed" in r["reason"]) for r in skipped.records] == [(7, True)]
    with pytest.raises(DataFormatError, match=rf"queries\.{fmt} line 7: not valid {fmt}: field 2 opens a quote"):
        _load(path, "error")


def test_random_quotes_never_merge_lines_loaded_plus_skipped_equals_lines(tmp_path):
    rng = random.Random(0)
    pieces = ['"', '""', ",", "dog", " ", "a b", "'", "\t"]
    for trial in range(40):
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 12))]
        path = tmp_path / f"q{trial}.csv"
        path.write_text("visual_id,text,lang\n" + "".join(f"v{i},{t},de\n" for i, t in enumerate(texts)))
        try:
            rows, skipped = _load(path)
        except DataFormatError as err:
            assert "no valid rows" in str(err)
            continue
        assert len(rows) + len(skipped) == len(texts), texts
        loaded = {int(v[1:]) for v in rows["visual_id"]}
        assert loaded.isdisjoint(r["line"] - 2 for r in skipped.records)


def test_duplicate_header_column_is_an_error_naming_it(tmp_path):
    for name, text in [("q.csv", "visual_id,text,lang,text\nv1,a,de,b\n"), ("q.tsv", "visual_id\ttext\tlang\tlang\nv1\ta\tde\tfr\n")]:
        path = tmp_path / name
        path.write_text(text)
        for mode in ("error", "skip"):
            with pytest.raises(DataFormatError, match=r"line 1: duplicate column '(text|lang)' in the header"):
                _load(path, mode)


def test_whitespace_lines_are_not_rows_but_separator_only_lines_are_reported(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("visual_id\ttext\tlang\nv1\tdog\tde\n   \n\t\t\nv2\tcat\tde\n")
    rows, skipped = _load(path)
    assert rows["visual_id"] == ["v1", "v2"] and [r["line"] for r in skipped.records] == [4]


@pytest.mark.parametrize("code", ["DE", "de ", " de", "d e", "De", ""])
def test_language_codes_with_case_or_spaces_are_refused_in_data_rows(tmp_path, code):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"visual_id": "v1", "source_text": "a dog", "target_text": "ein Hund", "target_lang": "de"}\n'
        f'{{"visual_id": "v2", "source_text": "a cat", "target_text": "eine Katze", "target_lang": "{code}"}}\n'
    )
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl line 2 .*target_lang"):
        load_pairs(path)
    skipped = SkippedRows()
    assert len(load_pairs(path, on_bad_row="skip", skipped=skipped)) == 1 and len(skipped) == 1
    with pytest.raises(DataFormatError, match="row 1 .*'lang'"):
        make_queries({"visual_id": ["v1", "v2"], "text": ["a", "b"], "lang": ["de", code]})


@pytest.mark.parametrize("text", ["\u200b", "\u200b \u200d", "\ufeff\u2060", "\u00ad", " \u200c\t"])
def test_invisible_captions_are_empty(tmp_path, text):
    path = tmp_path / "q.jsonl"
    rows = [{"visual_id": "v1", "text": "dog", "lang": "de"}, {"visual_id": "v2", "text": text, "lang": "de"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataFormatError, match=r"q\.jsonl line 2 .*empty text"):
        load_queries(path)
    with pytest.raises(DataFormatError, match="empty text"):
        make_queries({"visual_id": ["v1"], "text": [text], "lang": ["de"]})
    captions = tmp_path / "captions.txt"
    captions.write_text(f"dog\n{text}\n")
    with pytest.raises(DataFormatError, match=r"captions\.txt line 2: empty caption"):
        read_captions(captions)


def test_nul_characters_in_text_are_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"visual_id": "v1", "text": "dog", "lang": "de"}\n{"visual_id": "v2", "text": "a\\u0000b", "lang": "de"}\n')
    with pytest.raises(DataFormatError, match=r"q\.jsonl line 2 .*NUL"):
        load_queries(path)
    with pytest.raises(DataFormatError, match="NUL"):
        make_queries({"visual_id": ["v1"], "text": ["a\x00"], "lang": ["de"]})


def test_float_video_lengths_are_refused_not_truncated(tmp_path):
    frames = np.ones((2, 4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"lengths .*whole numbers.*2\.5"):
        VisualFeatureStore.from_arrays(["a", "b"], frames, lengths=[2.5, 4])
    store = VisualFeatureStore.from_arrays(["a", "b"], frames, lengths=np.array([2.0, 4.0]))  # whole floats are fine
    assert store.lengths.tolist() == [2, 4]
    with pytest.raises(ValueError, match="lengths"):
        VisualFeatureStore.from_arrays(["a", "b"], frames, lengths=np.array([True, True]))


@pytest.mark.parametrize("shape", [(3, 0), (3, 4, 0), (3, 0, 5)])
def test_zero_width_features_are_refused(shape):
    ids = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"feature store .*shape"):
        VisualFeatureStore.from_arrays(ids, np.zeros(shape, dtype=np.float32), name="feature store x")


# Texts that look blank: Unicode spaces (NBSP, ideographic, figure, narrow, ...), line and paragraph
# separators, zero-width and other format characters, lone combining marks and blank fillers.
BLANK_LOOKING = [
    "\u00a0", "\u00a0\u00a0", "\u3000", "\u3000\u3000", "\u2007", "\u202f", "\u205f", "\u1680", "\u2000\u200a",
    "\u2028", "\u2029", "\u0085", "\u200b", "\u200c\u200d", "\u2060", "\ufeff", "\u180e", "\u00ad", "\u200e\u200f",
    "\u202a\u202c", "\U000e0020", "\u0301", "\ufe0f", "\u3164", "\u115f\u1160", "\uffa0", "\u2800",
    " \t\u00a0\u200b\u3000 ",
]


def _jsonl(tmp_path, text):
    path = tmp_path / "q.jsonl"
    rows = [{"visual_id": "v1", "text": "dog", "lang": "de"}, {"visual_id": "v2", "text": text, "lang": "de"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return lambda: load_queries(path), r"q\.jsonl line 2 .*empty text"


def _csv(tmp_path, text):
    path = tmp_path / "q.csv"
    path.write_text(f"visual_id,text,lang\nv1,dog,de\nv2,{text},de\n", encoding="utf-8")
    return lambda: load_queries(path), r"q\.csv line 3 .*empty text"


def _parquet(tmp_path, text):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"visual_id": ["v1", "v2"], "text": ["dog", text], "lang": ["de", "de"]}), path)
    return lambda: load_queries(path), r"q\.parquet row 1 .*empty text"


def _pairs_jsonl(tmp_path, text):
    path = tmp_path / "p.jsonl"
    row = {"visual_id": "v1", "source_text": "a dog", "target_text": text, "target_lang": "de"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return lambda: load_pairs(path), r"p\.jsonl line 1 .*empty text in column 'target_text'"


def _in_memory(tmp_path, text):
    return lambda: make_queries({"visual_id": ["v1"], "text": [text], "lang": ["de"]}), "empty text"


def _caption_file(tmp_path, text):
    path = tmp_path / "captions.txt"
    path.write_text(f"dog\n{text}\n", encoding="utf-8")
    return lambda: read_captions(path), r"captions\.txt line 2: empty caption"


def _multi30k(tmp_path, text):
    import gzip

    from cl2cm_hf.data.multi30k import multi30k_queries

    (tmp_path / "task1" / "image_splits").mkdir(parents=True)
    (tmp_path / "task1" / "raw").mkdir()
    (tmp_path / "task1" / "image_splits" / "val.txt").write_text("1.jpg\n2.jpg\n")
    (tmp_path / "task1" / "raw" / "val.de.gz").write_bytes(gzip.compress(f"ein Hund\n{text}\n".encode()))
    return lambda: multi30k_queries(tmp_path, "val", "de"), r"val\.de\.gz line 2: empty caption"


def _nrccr(tmp_path, text):
    from cl2cm_hf.data.nrccr import load_nrccr_captions

    path = tmp_path / "captions.enc"
    path.write_text(f"video1#enc#0 a dog\nvideo1#enc#1 {text}\n", encoding="utf-8")
    return lambda: load_nrccr_captions(path), r"captions\.enc line 2: (empty caption|no caption after the id)"


def _id_file(tmp_path, text):
    from cl2cm_hf.data.textfiles import read_ids

    path = tmp_path / "ids.txt"
    path.write_text(f"1.jpg\n{text}\n", encoding="utf-8")
    return lambda: read_ids(path), r"ids\.txt line 2: empty id"


def _store_ids(tmp_path, text):
    ids = ["v1", text]
    return lambda: VisualFeatureStore.from_arrays(ids, np.ones((2, 3), dtype=np.float32), name="store"), "empty visual id"


LOADER_PATHS = [_jsonl, _csv, _parquet, _pairs_jsonl, _in_memory, _caption_file, _multi30k, _nrccr, _id_file, _store_ids]


@pytest.mark.parametrize("loader", LOADER_PATHS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("text", BLANK_LOOKING, ids=ascii)
def test_blank_looking_texts_are_refused_on_every_loader_path(tmp_path, loader, text):
    """One rule for blank text (`cl2cm_hf.data.schemas.is_blank`) on every reader, named by file and line."""
    load, message = loader(tmp_path, text)
    with pytest.raises((DataFormatError, ValueError), match=message):
        load()


@pytest.mark.parametrize("text", ["\u00a0a", "\u3000犬", "\u200bdog", "e\u0301", "\u3164\u314f", "\u2800\u2801"], ids=ascii)
def test_texts_with_a_visible_character_still_load(tmp_path, text):
    _jsonl(tmp_path, text)
    assert load_queries(tmp_path / "q.jsonl")["text"][1] == text  # table texts are kept as written
