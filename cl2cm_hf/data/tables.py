"""Generic tabular files (jsonl/json, csv/tsv, parquet) of pairs or queries, read with the datasets
library's packaged builders and checked column by column; extra columns (e.g. precomputed teacher
embeddings) are kept.

Every fault names the file and the line (jsonl, csv) or row (parquet): a line that is not JSON, a
value of the wrong type in one row, bytes that are not UTF-8, a truncated gzip, a csv record with
the wrong number of fields, an empty or null text, a duplicate ``caption_id`` (per target
language) and, given a feature store, a ``visual_id`` it lacks. With ``on_bad_row="skip"`` such
rows are left out, counted and listed (see `badrows`); whole-file faults (unreadable parquet,
missing columns, a column of the wrong type throughout) raise in both modes.

Well-formed files take the fast path (the datasets builders, Arrow-backed); only a file that fails
there is read again line by line, to find and name the bad lines.

CSV/TSV rules (one record per line, so a stray quote can never merge lines):

- A line break always ends a record; a blank line (without a separator; blank as `schemas.is_blank` says)
  is not a record. The first
  other line is the header; a duplicate column name in it is an error naming the column.
- Fields are separated by ``,`` (csv) or a tab (tsv). A field that starts with ``"`` and ends with
  the matching ``"`` right before the separator or the line end is *quoted*: the quotes are removed,
  ``""`` inside stands for one ``"``, and separators inside are text (``"a, b"`` -> ``a, b``).
- Any other ``"`` is an ordinary character: ``"Quoted" dog`` and ``say "hi"`` keep their quotes.
- A field that starts with ``"`` and has no other ``"`` up to the separator or the line end opens
  a quote that is never closed: the record is a bad row (reported by line, or skipped and listed).

So every line after the header is loaded or reported: loaded + skipped = the non-blank data lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Sequence
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, Value, concatenate_datasets

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.data.badrows import RowPolicy, SkippedRows
from cl2cm_hf.data.schemas import ID_COLUMNS, REQUIRED_COLUMNS, DataFormatError, row_problems
from cl2cm_hf.data.textfiles import read_bytes, split_lines
from cl2cm_hf.errors import CL2CMError

_OPTIONAL_STRING_COLUMNS = ("caption_id",)


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    formats = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
    if kind not in formats:
        raise CL2CMError(f"{path}: unknown table format {kind or '(no suffix)'!r}; expected one of {sorted(formats)}")
    return formats[kind]


# --- the fast path ---------------------------------------------------------------------------
def _fast_read(path: Path, fmt: str, strings: Sequence[str], cache_dir: str | None) -> Dataset:
    if fmt == "json":
        return Dataset.from_json(str(path), cache_dir=cache_dir)
    if fmt in ("csv", "tsv"):
        # Every id/text column read as the literal string: no '007' -> 7, no 'NA' -> NaN, '' stays ''.
        return Dataset.from_csv(
            str(path), cache_dir=cache_dir, sep="\t" if fmt == "tsv" else ",",
            converters={c: str for c in strings}, keep_default_na=False, na_filter=False,
        )
    return Dataset.from_parquet(str(path), cache_dir=cache_dir)


def _string_like(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _invalid_utf8(dataset: Dataset) -> str | None:
    """The first string column holding bytes that are not UTF-8 (arrow's json reader lets them in)."""
    table = dataset.with_format("arrow")[:]
    for name in table.column_names:
        if pa.types.is_string(table.schema.field(name).type) or pa.types.is_large_string(table.schema.field(name).type):
            try:
                table.column(name).validate(full=True)
            except pa.ArrowInvalid:
                return name
    return None


def _mixed(feature) -> bool:
    """A column the json builder could not type (e.g. strings in some rows, numbers in others)."""
    return not isinstance(feature, Value)


# --- the slow path: line by line, naming each bad line ----------------------------------------
def _line_records(path: Path, policy: RowPolicy, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of the lines (blank ones only with `keep_blank`); lines that are not
    UTF-8 or hold NUL bytes are bad rows."""
    raw = read_bytes(path)
    records = []
    for number, line in enumerate(split_lines(raw.decode("latin-1")), start=1):
        data = line.encode("latin-1")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            policy.bad(path, f"line {number}", f"not valid UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8",
                       content=data.decode("utf-8", "replace"))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if "\x00" in text:
            policy.bad(path, f"line {number}", "NUL byte (binary data, not a text file)", content=text.replace("\x00", "\\0"))
            continue
        if keep_blank or not is_blank(text):
            records.append((number, text))
    return records


def _check_value(path: Path, position: str, row: dict, column: str, kind: str, policy: RowPolicy) -> bool:
    """Coerce `row[column]` to a string in place (ints allowed for ids); False if the row is bad."""
    value = row.get(column)
    if value is None or isinstance(value, str):
        return True  # null and empty values are reported with the others, below
    if isinstance(value, int) and not isinstance(value, bool) and column in ID_COLUMNS[kind] + _OPTIONAL_STRING_COLUMNS:
        row[column] = str(value)
        return True
    visual_id = row.get("visual_id") if isinstance(row.get("visual_id"), str) else None
    policy.bad(path, position, f"column {column!r} holds {value!r} ({type(value).__name__}); expected a string",
               visual_id=visual_id, content=row)
    return False


def _scan_json(path: Path, kind: str, strings: Sequence[str], policy: RowPolicy):
    """Rows of a JSON-lines file (or a JSON array of objects), parsed one by one."""
    records = _line_records(path, policy)
    whole = None
    if [s.lower() for s in path.suffixes if s.lower() != ".gz"][-1:] == [".json"]:
        try:  # a .json file may hold one JSON array of objects instead of JSON lines
            whole = json.loads("\n".join(t for _, t in records))
        except json.JSONDecodeError:
            whole = None
    if isinstance(whole, list):
        records = [(f"row {i}", item) for i, item in enumerate(whole)]
    else:
        parsed = []
        for number, text in records:
            try:
                parsed.append((f"line {number}", json.loads(text)))
            except json.JSONDecodeError as err:
                policy.bad(path, f"line {number}", f"not valid JSON ({err.msg} at column {err.colno})", content=text)
        records = parsed
    rows, positions = [], []
    for position, item in records:
        if not isinstance(item, dict):
            policy.bad(path, position, f"expected a JSON object with columns {list(REQUIRED_COLUMNS[kind])}, "
                       f"got {type(item).__name__}", content=item)
            continue
        if all(_check_value(path, position, item, column, kind, policy) for column in strings if column in item):
            rows.append(item)
            positions.append(position)
    return rows, positions


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def split_record(line: str, delimiter: str) -> list[str]:
    """The fields of one csv/tsv line by the quoting rules of this module; a quote that is opened
    and never closed raises ValueError naming the field."""
    fields, start, end = [], 0, len(line)
    while True:
        if line.startswith('"', start):
            value, after = _quoted_field(line, start, delimiter)
            if value is None:  # not a quoted field: its quotes are text
                after = line.find(delimiter, start)
                after = end if after < 0 else after
                value = line[start:after]
                if value.count('"') < 2:
                    raise CL2CMError(f"field {len(fields) + 1} opens a quote that is not closed on its line")
        else:
            after = line.find(delimiter, start)
            after = end if after < 0 else after
            value = line[start:after]
        fields.append(value)
        if after >= end:
            return fields
        start = after + 1


def _quoted_field(line: str, start: int, delimiter: str) -> tuple[str | None, int]:
    """A quoted field opening at `start` and its end, or (None, start) if the closing quote is
    missing or not followed by the delimiter or the line end."""
    parts, position = [], start + 1
    while True:
        close = line.find('"', position)
        if close < 0:
            return None, start
        if line.startswith('"', close + 1):  # "" stands for one quote
            parts.append(line[position : close + 1])
            position = close + 2
            continue
        if close + 1 == len(line) or line.startswith(delimiter, close + 1):
            parts.append(line[position:close])
            return "".join(parts), close + 1
        return None, start


def _csv_header(path: Path, fmt: str, number: int, text: str) -> list[str]:
    try:
        header = split_record(text, _delimiter(fmt))
    except ValueError as err:
        raise DataFormatError(f"{path} line {number}: the header is not valid {fmt} ({err})") from None
    seen: dict[str, int] = {}
    for index, name in enumerate(header, start=1):
        if name in seen:
            raise DataFormatError(
                f"{path} line {number}: duplicate column {name!r} in the header (fields {seen[name]} and {index}); "
                "column names must be unique"
            )
        seen[name] = index
    return header


def _scan_csv(path: Path, fmt: str, policy: RowPolicy):
    """Rows of a csv/tsv file, line by line (see the rules above): a record with an unclosed quote
    or the wrong number of fields is bad."""
    delimiter = _delimiter(fmt)
    lines = [(n, t) for n, t in _line_records(path, policy, keep_blank=True) if not is_blank(t) or delimiter in t]
    if not lines:
        raise DataFormatError(f"{path}: empty file (expected a header line)")
    header = _csv_header(path, fmt, *lines[0])
    rows, positions = [], []
    for number, text in lines[1:]:
        try:
            record = split_record(text, delimiter)
        except ValueError as err:
            policy.bad(path, f"line {number}", f"not valid {fmt}: {err}", content=text)
            continue
        if len(record) != len(header):
            policy.bad(path, f"line {number}", f"expected {len(header)} fields (as the header), found {len(record)}",
                       content=record)
            continue
        rows.append(dict(zip(header, record)))
        positions.append(f"line {number}")
    return rows, positions


def _csv_takes_fast_path(path: Path, fmt: str) -> bool:
    """True when pandas reads the file exactly as the rules above: no quote character, no blank
    line before the end (the fast path numbers rows by position) and every record as wide as the
    header (pandas would turn a first data row with a field too many into an index column and
    shift every later row). A header with a duplicate column raises."""
    text = read_bytes(path).decode("utf-8", "replace").removeprefix("\ufeff")
    lines = split_lines(text)
    if not lines or is_blank(lines[0]):
        return False
    header = _csv_header(path, fmt, 1, lines[0])
    delimiter = _delimiter(fmt)
    return '"' not in text and all(
        (not is_blank(line) or delimiter in line) and line.count(delimiter) == len(header) - 1 for line in lines[1:]
    )


def _rows_to_dataset(path: Path, rows: list[dict], strings: Sequence[str]) -> Dataset:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        table = pa.table({
            c: pa.array([row.get(c) for row in rows], type=pa.string() if c in strings else None) for c in columns
        })
        return Dataset(table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise DataFormatError(f"{path}: rows do not form a table ({err})") from None


# --- row checks -------------------------------------------------------------------------------
def _bad_rows(dataset: Dataset, kind: str, visual_ids: Container | None) -> dict[int, tuple[str, int | None]]:
    """Row index -> (what is wrong, index of the row it duplicates or None), for every bad row."""
    table = dataset.with_format("arrow")[:]
    bad: dict[int, tuple[str, int | None]] = {index: (reason, None) for index, reason in row_problems(table, kind).items()}
    if kind == "pair" and "caption_id" in table.column_names:
        seen: dict[tuple, int] = {}
        keys = zip(table.column("caption_id").to_pylist(), table.column("target_lang").to_pylist())
        for index, key in enumerate(keys):
            if key[0] is None or index in bad:
                continue
            if key in seen:
                bad[index] = (f"duplicate caption_id {key[0]!r} for target_lang {key[1]!r}", seen[key])
            else:
                seen[key] = index
    if visual_ids is not None:
        name = getattr(visual_ids, "name", "the feature store")
        for index, visual_id in enumerate(table.column("visual_id").to_pylist()):
            if visual_id is not None and index not in bad and visual_id not in visual_ids:
                bad[index] = (f"visual_id {visual_id!r} is not in {name}", None)
    return bad


def _read_one(
    path: Path, kind: str, cache_dir: str | None, policy: RowPolicy, visual_ids: Container | None = None
) -> Dataset:
    """One file as a validated Dataset; errors name the file, the column and the line/row."""
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    strings = REQUIRED_COLUMNS[kind] + _OPTIONAL_STRING_COLUMNS
    dataset, positions, failure = None, None, None
    try:
        if fmt not in ("csv", "tsv") or _csv_takes_fast_path(path, fmt):
            dataset = _fast_read(path, fmt, strings, cache_dir)
    except DataFormatError:
        raise
    except Exception as err:
        failure = err
    if fmt == "parquet" and dataset is None:
        raise DataFormatError(f"{path}: not a readable parquet file ({type(failure).__name__}: {failure})") from None
    if dataset is not None and (column := _invalid_utf8(dataset)) is not None:
        if fmt == "parquet":
            raise DataFormatError(f"{path}: column {column!r} holds bytes that are not valid UTF-8")
        dataset = None  # read again line by line to name the line
    mixed = dataset is not None and any(_mixed(dataset.features[c]) for c in strings if c in dataset.column_names)
    if dataset is None or mixed:
        if fmt == "json":
            rows, positions = _scan_json(path, kind, strings, policy)
        else:
            rows, positions = _scan_csv(path, fmt, policy)
        dataset = _rows_to_dataset(path, rows, strings)
    unit, offset = {"json": ("line", 1), "csv": ("line", 2), "tsv": ("line", 2), "parquet": ("row", 0)}[fmt]
    if positions is None:
        positions = [f"{unit} {i + offset}" for i in range(len(dataset))]
    if len(dataset) == 0:
        policy.warn(path, 0)  # raises: no rows
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in dataset.column_names]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {missing} for {kind} rows; expected {list(REQUIRED_COLUMNS[kind])}, "
            f"found {dataset.column_names}"
        )
    for column in strings:
        if column not in dataset.column_names:
            continue
        feature = dataset.features[column]
        if getattr(feature, "dtype", None) == "string":
            continue
        dtype = getattr(feature, "dtype", None)
        ids_ok = column in ID_COLUMNS[kind] + _OPTIONAL_STRING_COLUMNS and dtype is not None and "int" in dtype
        null = dtype == "null"  # every value of the column is null: reported row by row below
        if not (_string_like(feature) or ids_ok or null):
            raise DataFormatError(f"{path}: column {column!r} has type {feature}; expected strings")
        dataset = dataset.cast_column(column, Value("string"))
    bad = _bad_rows(dataset, kind, visual_ids)
    if bad:
        visual = dataset.with_format("arrow")[:].column("visual_id").to_pylist()
        for index in sorted(bad):
            reason, first = bad[index]
            if first is not None:
                reason += f" (first on {positions[first]})"
            policy.bad(path, positions[index], reason, visual_id=visual[index], content=dataset[index])
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
    policy.warn(path, len(dataset))
    return dataset


PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def load_table(
    path_or_paths: PathOrPaths,
    kind: str,
    cache_dir: str | None = None,
    on_bad_row: str = "error",
    skipped: SkippedRows | None = None,
    visual_ids: Container | None = None,
) -> Dataset:
    """Rows of type `kind` ("pair" or "query") from one or several files, concatenated in order.

    `on_bad_row`: ``"error"`` (raise naming file and line) or ``"skip"`` (leave the row out, log it and
    add it to `skipped`). `visual_ids`: a container (e.g. a `VisualFeatureStore`) every row's
    ``visual_id`` must be in."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not paths:
        raise CL2CMError("no files given")
    policy = RowPolicy(on_bad_row, skipped)
    parts = [_read_one(Path(p), kind, cache_dir, policy, visual_ids) for p in paths]
    if len(parts) == 1:
        return parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        if part.features != parts[0].features:
            raise DataFormatError(f"{path}: columns {part.features} differ from those of {paths[0]}: {parts[0].features}")
    return concatenate_datasets(parts)


def load_pairs(path_or_paths: PathOrPaths, cache_dir: str | None = None, **policy) -> Dataset:
    """Translated pairs from jsonl/json/csv/tsv/parquet file(s) (``caption_id`` and extra columns optional).
    Keyword arguments `on_bad_row`, `skipped`, `visual_ids`: see `load_table`."""
    return load_table(path_or_paths, "pair", cache_dir, **policy)


def load_queries(path_or_paths: PathOrPaths, cache_dir: str | None = None, **policy) -> Dataset:
    """Queries ``(visual_id, text, lang)`` from jsonl/json/csv/tsv/parquet file(s).
    Keyword arguments `on_bad_row`, `skipped`, `visual_ids`: see `load_table`."""
    return load_table(path_or_paths, "query", cache_dir, **policy)
