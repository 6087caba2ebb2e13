"""Outputs that never half-exist: files and folders are written under a temporary name and renamed."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _backup_of(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def recover_directory(folder: str | Path) -> None:
    """Put back the previous version of `folder` if a swap was interrupted between its two renames."""
    folder = Path(folder)
    backup = _backup_of(folder)
    if backup.exists() and not folder.exists():
        os.rename(backup, folder)


@contextlib.contextmanager
def atomic_directory(folder: str | Path):
    """Yield a temporary sibling folder to fill; on success it replaces `folder`.

    The old version is renamed aside, the new one renamed in, the old one removed: a process
    killed while writing leaves the previous complete version in place (and a kill between the two
    renames is undone by `recover_directory`, called here and by loaders)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = _backup_of(folder)
    shutil.rmtree(backup, ignore_errors=True)
    if folder.exists():
        os.rename(folder, backup)
    os.rename(tmp, folder)
    shutil.rmtree(backup, ignore_errors=True)
