"""Generic tabular files (jsonl/json, csv/tsv, parquet) of pairs or queries, read with the datasets
library's packaged builders and checked column by column; extra columns (e.g. precomputed teacher
embeddings) are kept."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, Value, concatenate_datasets

from .schemas import ID_COLUMNS, REQUIRED_COLUMNS, DataFormatError, validate_rows

_OPTIONAL_STRING_COLUMNS = ("caption_id",)


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    formats = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
    if kind not in formats:
        raise ValueError(f"{path}: unknown table format {kind or '(no suffix)'!r}; expected one of {sorted(formats)}")
    return formats[kind]


def _read_one(path: Path, kind: str, cache_dir: str | None) -> Dataset:
    """One file as a validated Dataset; errors name the file, the column and the line/row."""
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    strings = REQUIRED_COLUMNS[kind] + _OPTIONAL_STRING_COLUMNS
    if fmt == "json":
        dataset, unit, offset = Dataset.from_json(str(path), cache_dir=cache_dir), "line", 1
    elif fmt in ("csv", "tsv"):
        # Every id/text column read as the literal string: no '007' -> 7, no 'NA' -> NaN, '' stays ''.
        dataset = Dataset.from_csv(
            str(path), cache_dir=cache_dir, sep="\t" if fmt == "tsv" else ",",
            converters={c: str for c in strings}, keep_default_na=False, na_filter=False,
        )
        unit, offset = "line", 2  # the header is line 1
    else:
        dataset, unit, offset = Dataset.from_parquet(str(path), cache_dir=cache_dir), "row", 0
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
        dtype = getattr(feature, "dtype", None)
        if dtype == "string":
            continue
        ids_ok = column in ID_COLUMNS[kind] + _OPTIONAL_STRING_COLUMNS and dtype is not None and "int" in dtype
        if not (dtype == "large_string" or ids_ok):
            raise DataFormatError(f"{path}: column {column!r} has type {feature}; expected strings")
        dataset = dataset.cast_column(column, Value("string"))
    return validate_rows(dataset, kind, f"{path}", row_offset=offset, unit=unit)


PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def load_table(path_or_paths: PathOrPaths, kind: str, cache_dir: str | None = None) -> Dataset:
    """Rows of type `kind` ("pair" or "query") from one or several files, concatenated in order."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not paths:
        raise ValueError("no files given")
    parts = [_read_one(Path(p), kind, cache_dir) for p in paths]
    if len(parts) == 1:
        return parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        if part.features != parts[0].features:
            raise DataFormatError(f"{path}: columns {part.features} differ from those of {paths[0]}: {parts[0].features}")
    return concatenate_datasets(parts)


def load_pairs(path_or_paths: PathOrPaths, cache_dir: str | None = None) -> Dataset:
    """Translated pairs from jsonl/json/csv/tsv/parquet file(s) (``caption_id`` and extra columns optional)."""
    return load_table(path_or_paths, "pair", cache_dir)


def load_queries(path_or_paths: PathOrPaths, cache_dir: str | None = None) -> Dataset:
    """Queries ``(visual_id, text, lang)`` from jsonl/json/csv/tsv/parquet file(s)."""
    return load_table(path_or_paths, "query", cache_dir)
