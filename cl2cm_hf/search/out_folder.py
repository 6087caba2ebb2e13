"""Where ``cl2cm-index --out`` may write: a missing or empty folder, or an index that cl2cm-index wrote.

An index folder is replaced as a whole (`cl2cm_hf.atomic`), so writing into a folder deletes what
was there. `check_out_folder` therefore refuses, before anything is loaded or written, a folder
that holds anything cl2cm-index did not write, the input folders (images, features, pictures) or
any folder above or inside them, and the checkpoint folder (or above or inside it). An index is
recognised by the marker file it holds from its first write on (`INDEX_MARKER`, which records the
source it indexes); an index of another source is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
from fnmatch import fnmatch
from pathlib import Path

from cl2cm_hf.atomic import atomic_write_text, folder_target
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.ann import ANN_FILE
from cl2cm_hf.search.index_files import DATA_DIR, EMBEDDINGS_FILE, FAISS_FILE, INDEX_FORMAT, METADATA_FILE, REPORT_FILE, SHARDS_DIR
from cl2cm_hf.search.query_encoder import QUERY_ENCODER_DIR, QUERY_ENCODER_FILES

INDEX_MARKER = ".cl2cm-index"
_MARKER_TMP = f".{INDEX_MARKER}.*.tmp"  # the marker's temporary, left by a kill while it was written
# What an index folder holds (name -> the names allowed inside it; None for a file).
_LAYOUT = {
    INDEX_MARKER: None, METADATA_FILE: None, REPORT_FILE: None, FAISS_FILE: None, EMBEDDINGS_FILE: None, ANN_FILE: None,
    DATA_DIR: ("data-*.arrow", "dataset_info.json", "state.json"),
    SHARDS_DIR: ("*.safetensors", ".*.tmp"),
    QUERY_ENCODER_DIR: QUERY_ENCODER_FILES,
}


class OutFolderError(CL2CMError):
    """``--out`` names a folder that cl2cm-index must not replace; the message says why."""


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def index_source(folder: Path) -> str | None:
    """The source recorded in the index `folder` (its marker, or the metadata of an index written
    before markers were), or None when `folder` is not an index cl2cm-index wrote."""
    for name in (INDEX_MARKER, METADATA_FILE):
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == INDEX_FORMAT and isinstance(record.get("source"), dict):
            return str(record["source"].get("path"))
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of `folder` that are not part of an index's layout (``sub/`` for folders)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if fnmatch(entry.name, _MARKER_TMP):
            continue
        allowed = _LAYOUT.get(entry.name, False)
        if allowed is False or (allowed is None) != (not entry.is_dir() or entry.is_symlink()):
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
        elif allowed:
            foreign += [f"{entry.name}/{inner.name}" for inner in sorted(entry.iterdir())
                        if inner.is_dir() or not any(fnmatch(inner.name, pattern) for pattern in allowed)]
    return foreign


def check_out_folder(out, source: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], model=None,
                     overwrite: bool = False) -> Path:
    """The folder an index of `source` may be written to for ``--out`` `out` (a symlink is
    followed), or `OutFolderError` naming the folder and why not.

    `inputs`: option name -> the path it gives (images, features, pictures); `model`: the
    checkpoint (a folder is protected like an input folder)."""
    given = Path(out)
    if not str(out).strip():
        raise OutFolderError("--out is empty; give the index folder to write")
    try:
        folder = folder_target(given).resolve()
    except NotADirectoryError as err:
        raise OutFolderError(f"--out {err}") from None
    protected = {name: Path(path).resolve() for name, path in inputs.items() if path is not None}
    if model is not None and Path(model).is_dir():
        protected["the checkpoint (model)"] = Path(model).resolve()
    for name, path in protected.items():
        if _within(path, folder) or (path.is_dir() and _within(folder, path)):
            where = "is" if folder == path else ("is above" if _within(path, folder) else "is inside")
            kind = "folder" if path.is_dir() else "file"
            raise OutFolderError(f"--out {given}: {where} {name} {kind} {path}; writing the index there would replace "
                                 "or mix with your files. Choose a separate folder for the index")
    if not folder.exists():
        return folder
    try:
        entries = [entry.name for entry in folder.iterdir() if not fnmatch(entry.name, _MARKER_TMP)]
        if not entries:
            return folder
        recorded = index_source(folder)
        if recorded is None:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutFolderError(f"--out {given}: holds files that cl2cm-index did not write ({shown}); the index "
                                 "replaces its folder as a whole, so give an empty or new folder")
        foreign = _foreign_entries(folder)
    except PermissionError as err:
        raise OutFolderError(f"--out {given}: cannot be read ({err.strerror}); give a folder you can write") from None
    if foreign:
        raise OutFolderError(f"--out {given}: an index folder that also holds files cl2cm-index did not write "
                             f"({', '.join(foreign[:5])}); move them out first: replacing the index would delete them")
    if recorded != str(Path(source).absolute()) and not overwrite:
        raise OutFolderError(f"--out {given}: holds the index of {recorded}, not of {Path(source).absolute()}; "
                             "pass --overwrite (overwrite=True) to replace it")
    return folder


def mark_index_folder(folder: Path, source: str | os.PathLike) -> None:
    """Write the marker that makes `folder` recognisable as an index of `source` (before any shard)."""
    atomic_write_text(folder / INDEX_MARKER, json.dumps({"format": INDEX_FORMAT, "source": {"path": str(Path(source).absolute())}}))
