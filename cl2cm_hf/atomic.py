"""Outputs that never half-exist: files and folders are written under a temporary name and renamed.

A reader sees either the previous complete version or the new complete one: a process killed while
writing leaves the previous version (plus a hidden temporary that the next write removes), and a
kill between the two renames of a folder swap is undone by `recover_directory`. Contents are
fsynced before the rename, so after a power cut the renamed file or folder is not empty either.
"""

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the platform or filesystem cannot, and nothing was changed."""
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(errno, os.strerror(errno), f"{a} <-> {b}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file (and folder) under `folder` to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                with open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(Path(root))


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
    _fsync_dir(path.parent)


def _backup_of(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def recover_directory(folder: str | Path) -> None:
    """Put back the previous version of `folder` if a swap was interrupted between its two renames."""
    folder = Path(folder)
    backup = _backup_of(folder)
    if backup.exists() and not folder.exists():
        os.rename(backup, folder)


def replace_directory(source: str | Path, folder: str | Path) -> None:
    """Move the complete folder `source` to `folder` (same filesystem), replacing any old `folder`.

    On Linux the two folders are exchanged in one atomic step, so `folder` is never missing, even
    to a concurrent reader. Elsewhere the old version is renamed aside, the new one renamed in and
    the old one removed; `recover_directory` undoes a kill between the two renames."""
    source, folder = Path(source), Path(folder)
    fsync_tree(source)
    recover_directory(folder)
    backup = _backup_of(folder)
    shutil.rmtree(backup, ignore_errors=True)
    if folder.exists() and exchange_paths(source, folder):
        os.rename(source, backup)  # `source` now holds the old version
    else:
        if folder.exists():
            os.rename(folder, backup)
        os.rename(source, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(backup, ignore_errors=True)


def remove_stale_temporaries(parent: str | Path, name: str) -> None:
    """Remove temporaries of `name` left in `parent` by writers that were killed (hidden, never loaded)."""
    parent = Path(parent)
    if parent.is_dir():
        for stale in parent.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def final_path(path: str | Path) -> Path:
    """The path a temporary of `atomic_directory` or `atomic_write_bytes` (``.<name>.<random>.tmp``)
    is renamed to once complete; any other `path` unchanged. Lets code that reads a folder while it
    is written (a model card built inside the run's temporary folder) name it by its final name."""
    path = Path(path)
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name)
    return path.with_name(match.group(1)) if match else path


@contextlib.contextmanager
def atomic_directory(folder: str | Path):
    """Yield a temporary sibling folder to fill; on success it replaces `folder`.

    The old version is renamed aside, the new one renamed in, the old one removed: a process
    killed while writing leaves the previous complete version in place (and a kill between the two
    renames is undone by `recover_directory`, called here and by loaders)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(folder)
    remove_stale_temporaries(folder.parent, folder.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, folder)
