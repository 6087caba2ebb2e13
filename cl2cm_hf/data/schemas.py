"""Row types of the data layer (as `datasets.Features`) and their validation.

- translated pair: ``visual_id, source_text, target_text, target_lang`` (+ optional ``caption_id``)
- query: ``visual_id, text, lang`` (several rows per visual item allowed)
- caption (NRCCR files): ``visual_id, text, caption_id``

Validation errors name the source (file or dataset) and the row, so a broken file is found at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Value

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.errors import CL2CMError

PAIR_COLUMNS = ("visual_id", "source_text", "target_text", "target_lang")
QUERY_COLUMNS = ("visual_id", "text", "lang")
CAPTION_COLUMNS = ("visual_id", "text", "caption_id")

PAIR_FEATURES = Features({name: Value("string") for name in PAIR_COLUMNS})
PAIR_FEATURES_WITH_CAPTION_ID = Features({**PAIR_FEATURES, "caption_id": Value("string")})
QUERY_FEATURES = Features({name: Value("string") for name in QUERY_COLUMNS})
CAPTION_FEATURES = Features({name: Value("string") for name in CAPTION_COLUMNS})

# Columns that hold free text: an empty or whitespace-only value is an error.
TEXT_COLUMNS = {"pair": ("source_text", "target_text"), "query": ("text",), "caption": ("text",)}
REQUIRED_COLUMNS = {"pair": PAIR_COLUMNS, "query": QUERY_COLUMNS, "caption": CAPTION_COLUMNS}
# Columns that must be non-empty identifiers (checked like text, reported as ids).
ID_COLUMNS = {"pair": ("visual_id", "target_lang"), "query": ("visual_id", "lang"), "caption": ("visual_id", "caption_id")}
# Columns holding language codes (see LANGUAGE_CODE).
LANGUAGE_COLUMNS = {"pair": ("target_lang",), "query": ("lang",), "caption": ()}


class DataFormatError(CL2CMError):
    """A data file or dataset does not have the expected shape; the message names where."""


# Language codes are compared as written, so "DE" or "de " would silently be another language (no
# queries evaluated, no MT pairs found): they must be lower case, without spaces, ISO 639 letters
# with optional subtags ("de", "zh", "pt-br"). Settings and data rows that break the rule are refused.
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:[-_][a-z0-9]{1,8})*")
LANGUAGE_CODE_RULE = "a language code in lower case without spaces, e.g. 'de', 'zh' or 'pt-br'"


def language_code_problem(code) -> str | None:
    """Why `code` is not a language code (see `LANGUAGE_CODE_RULE`), or None if it is one."""
    if not isinstance(code, str) or LANGUAGE_CODE.fullmatch(code):
        return None if isinstance(code, str) else f"{code!r} is not a string"
    hint = code.strip().lower()
    suggestion = f" (did you mean {hint!r}?)" if LANGUAGE_CODE.fullmatch(hint) else ""
    return f"{code!r} is not {LANGUAGE_CODE_RULE}{suggestion}"


def check_text(text: str, where: str, column: str = "caption") -> str:
    """Return `text` stripped; raise naming `where` (e.g. ``"file.gz line 7"``) if it holds a NUL
    character or is blank (`is_blank`)."""
    if "\x00" in text:
        raise DataFormatError(f"{where}: NUL character in the {column} (binary data?)")
    if is_blank(text):
        raise DataFormatError(f"{where}: empty {column} (expected a non-empty string)")
    return text.strip()


def row_problems(table: pa.Table, kind: str) -> dict[int, str]:
    """Row index -> what is wrong with its texts and ids (the first problem of the row): null,
    empty or invisible-only values, NUL characters, language codes that break `LANGUAGE_CODE`."""
    problems: dict[int, str] = {}
    for column in TEXT_COLUMNS[kind] + ID_COLUMNS[kind]:
        values = table.column(column)
        what = "text" if column in TEXT_COLUMNS[kind] else "id"
        nul = pc.fill_null(pc.match_substring(values, "\x00"), False).to_numpy(zero_copy_only=False)
        for index in np.flatnonzero(nul):
            problems.setdefault(int(index), f"NUL character in column {column!r} (binary data?)")
        # A printable ASCII character is never blank: only the other values go through `is_blank`.
        visible = pc.fill_null(pc.match_substring_regex(values, "[!-~]"), False).to_numpy(zero_copy_only=False)
        others = np.flatnonzero(~visible)
        for index, value in zip(others, values.take(pa.array(others, type=pa.int64())).to_pylist()):
            if is_blank(value):
                problems.setdefault(int(index), f"empty {what} in column {column!r} (expected a non-empty string)")
        if column in LANGUAGE_COLUMNS[kind]:
            codes = pc.fill_null(pc.match_substring_regex(values, f"^{LANGUAGE_CODE.pattern}$"), True)
            for index in np.flatnonzero(~codes.to_numpy(zero_copy_only=False)):
                problems.setdefault(int(index), f"column {column!r}: {language_code_problem(values[int(index)].as_py())}")
    return problems


def validate_rows(dataset: Dataset, kind: str, source: str = "dataset", row_offset: int = 0, unit: str = "row") -> Dataset:
    """Check that `dataset` has the columns of row type `kind` ("pair", "query" or "caption"), that
    they are strings, and that no text or id is empty. Returns the dataset unchanged.

    Errors name `source` (e.g. a file), the column and the position ``f"{unit} {index + row_offset}"``
    (a jsonl file: ``unit="line", row_offset=1``; a csv file with a header: ``row_offset=2``).
    """
    if kind not in REQUIRED_COLUMNS:
        raise CL2CMError(f"unknown row type {kind!r}; expected one of {sorted(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in dataset.column_names]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {missing} for {kind} rows; expected {list(REQUIRED_COLUMNS[kind])}, "
            f"found {dataset.column_names}"
        )
    for column in REQUIRED_COLUMNS[kind]:
        feature = dataset.features[column]
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise DataFormatError(f"{source}: column {column!r} has type {feature}; expected strings")
    checked = TEXT_COLUMNS[kind] + ID_COLUMNS[kind]
    table = dataset.select_columns(list(dict.fromkeys(("visual_id",) + checked))).with_format("arrow")[:]
    problems = row_problems(table, kind)
    if problems:
        row = min(problems)
        visual_id = table.column("visual_id")[row].as_py()
        raise DataFormatError(f"{source} {unit} {row + row_offset} (visual_id={visual_id!r}): {problems[row]}")
    return dataset


def validate_pairs(dataset: Dataset, source: str = "pairs") -> Dataset:
    """`validate_rows` for translated pairs."""
    return validate_rows(dataset, "pair", source)


def validate_queries(dataset: Dataset, source: str = "queries") -> Dataset:
    """`validate_rows` for queries."""
    return validate_rows(dataset, "query", source)


def _features_for(kind: str, columns: Mapping[str, Sequence]) -> Features:
    base = {"pair": PAIR_FEATURES, "query": QUERY_FEATURES, "caption": CAPTION_FEATURES}[kind]
    if kind == "pair" and "caption_id" in columns:
        base = PAIR_FEATURES_WITH_CAPTION_ID
    extra = [c for c in columns if c not in base]
    if extra:
        raise DataFormatError(f"unexpected column(s) {extra} for {kind} rows; expected {list(base)}")
    return base


def rows_to_dataset(kind: str, columns: Mapping[str, Sequence], source: str = "rows") -> Dataset:
    """Build a validated Dataset of row type `kind` from column lists (all values strings)."""
    features = _features_for(kind, columns)
    ordered = {name: list(columns[name]) for name in features if name in columns}
    missing = [name for name in features if name not in columns]
    if missing:
        raise DataFormatError(f"{source}: missing column(s) {missing} for {kind} rows")
    return validate_rows(Dataset.from_dict(ordered, features=features), kind, source)


def make_pairs(columns: Mapping[str, Sequence], source: str = "pairs") -> Dataset:
    """Translated-pair Dataset from column lists (``caption_id`` optional)."""
    return rows_to_dataset("pair", columns, source)


def make_queries(columns: Mapping[str, Sequence], source: str = "queries") -> Dataset:
    """Query Dataset from column lists."""
    return rows_to_dataset("query", columns, source)
