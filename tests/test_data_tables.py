"""Row schemas and the generic jsonl/csv/parquet readers."""

import json

import pytest
from datasets import Dataset

from cl2cm_hf.data import DataFormatError, load_pairs, load_queries, make_pairs, make_queries, validate_pairs

PAIR = {"visual_id": "v1", "source_text": "a dog", "target_text": "ein Hund", "target_lang": "de"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_make_pairs_and_queries_have_string_schema():
    pairs = make_pairs({k: [v] for k, v in {**PAIR, "caption_id": "v1#0"}.items()})
    assert pairs.column_names == ["visual_id", "source_text", "target_text", "target_lang", "caption_id"]
    assert all(f.dtype == "string" for f in pairs.features.values())
    queries = make_queries({"visual_id": ["v1", "v1"], "text": ["a", "b"], "lang": ["en", "en"]})
    assert len(queries) == 2


def test_empty_caption_in_memory_names_row_and_column():
    rows = {k: [v, v] for k, v in PAIR.items()}
    rows["target_text"][1] = "   "
    with pytest.raises(DataFormatError, match=r"my pairs row 1 \(visual_id='v1'\): empty text in column 'target_text'"):
        make_pairs(rows, "my pairs")


def test_validate_sees_through_select_views():
    rows = {k: [v, v] for k, v in PAIR.items()}
    rows["source_text"][0] = ""
    dataset = Dataset.from_dict(rows)
    validate_pairs(dataset.select([1]))  # the bad row is not in the view
    with pytest.raises(DataFormatError, match=r"view row 1 \(visual_id='v1'\): empty text in column 'source_text'"):
        validate_pairs(dataset.select([1, 0]), "view")  # rows are counted in the view


def test_jsonl_csv_parquet_round_trip(tmp_path):
    rows = [dict(PAIR, visual_id=f"00{i}", caption_id=f"00{i}#0") for i in range(3)]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    Dataset.from_list(rows).to_csv(tmp_path / "p.csv", index=False)
    Dataset.from_list(rows).to_parquet(tmp_path / "p.parquet")
    for path in (jsonl, tmp_path / "p.csv", tmp_path / "p.parquet"):
        pairs = load_pairs(path, cache_dir=str(tmp_path / "cache"))
        assert pairs["visual_id"][:] == ["000", "001", "002"], path  # csv keeps leading zeros
        assert pairs.features["visual_id"].dtype == "string"
    both = load_pairs([jsonl, jsonl], cache_dir=str(tmp_path / "cache"))
    assert len(both) == 6


def test_integer_ids_become_strings_and_extra_columns_stay(tmp_path):
    rows = [dict(PAIR, visual_id=17, teacher_source_embeds=[0.1, 0.2])]
    pairs = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), cache_dir=str(tmp_path / "cache"))
    assert pairs[0]["visual_id"] == "17" and pairs[0]["teacher_source_embeds"] == pytest.approx([0.1, 0.2])


def test_missing_column_names_file_and_column(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"visual_id": "v", "text": "hallo"}])
    with pytest.raises(DataFormatError, match=r"q\.jsonl: missing column\(s\) \['lang'\]"):
        load_queries(path, cache_dir=str(tmp_path / "cache"))


def test_wrong_type_names_column(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"visual_id": "v", "text": 3.5, "lang": "de"}])
    with pytest.raises(DataFormatError, match=r"q\.jsonl: column 'text' has type .*float.*expected strings"):
        load_queries(path, cache_dir=str(tmp_path / "cache"))


def test_empty_caption_in_file_names_file_and_line(tmp_path):
    rows = [PAIR, dict(PAIR, visual_id="v2", target_text="")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"p\.jsonl line 2 \(visual_id='v2'\): empty text in column 'target_text'"):
        load_pairs(path, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "p.csv").write_text("visual_id,source_text,target_text,target_lang\nv1,a,b,de\nv2,a,,de\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"p\.csv line 3 \(visual_id='v2'\)"):
        load_pairs(tmp_path / "p.csv", cache_dir=str(tmp_path / "cache"))


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unknown table format"):
        load_pairs(tmp_path / "p.txt")
