"""Outputs that never half-exist: files and folders are written under a temporary name and renamed.

A reader sees either the previous complete version or the new complete one: a process killed while
writing leaves the previous version (plus a hidden temporary that the next write removes), and a
kill between the two renames of a folder swap is undone by `recover_directory`. Contents are
fsynced before the rename, so after a power cut the renamed file or folder is not empty either.

Permissions: a written file or folder gets the mode the process umask gives any new file or folder
(``0o666 & ~umask`` and ``0o777 & ~umask``), although `tempfile` creates its temporaries private
(0600/0700) and some writers (transformers' ``model.safetensors``) make theirs private too: a
folder is given those modes throughout just before it is renamed into place, so outputs are as readable to other users as anything else the user writes.

The target of a folder write must be a folder or absent: a symlink is followed deliberately (the
folder it points to is replaced; the link stays) and a regular file, a dangling link or another
kind of path is refused with `NotADirectoryError` before anything is written, so a bad target never
leaves the output folder in a state that breaks the next run.

A checkpoint folder (one with a ``config.json``) is published as a version instead
(`cl2cm_hf.versioned_folders`): ``.<name>.v<version>/`` beside it, ``<name>`` an atomically replaced
symlink to it, the previous version kept (and any a reader holds), so a reader that resolved the
link once never mixes two versions' files. A link that is such a published name is the output
itself, never followed to its version folder.
"""

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from cl2cm_hf.versioned_folders import VERSION_FOLDER, VERSION_KEY, link_version, unless_held, version_folder_name

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


def current_umask() -> int:
    """The process umask (read from /proc where there is one: setting it to read it back is not
    thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(folder: bool) -> int:
    return (0o777 if folder else 0o666) & ~current_umask()


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


def apply_umask_modes(folder: str | Path) -> None:
    """Give `folder`, its sub-folders and files the modes a new folder or file gets under the umask
    (an executable file stays executable); symlinks are left alone."""
    folder_mode, file_mode = _default_mode(folder=True), _default_mode(folder=False)
    os.chmod(folder, folder_mode)
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                os.chmod(path, folder_mode)
            elif stat.S_ISREG(info.st_mode):
                os.chmod(path, folder_mode if info.st_mode & 0o111 else file_mode)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode(folder=False))
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


def _remove(path: Path) -> None:
    """Remove whatever `path` is (folder, file, symlink; a link, not its target); absent is fine."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def folder_target(folder: str | Path) -> Path:
    """The path a write to `folder` replaces: `folder` itself, the published link of a versioned
    folder, or the folder a (user's) symlink points to. A regular file, a dangling or looping link,
    or any other non-folder raises `NotADirectoryError` naming the path and what it is."""
    given = path = Path(folder)
    for _ in range(40):
        if not path.is_symlink() or link_version(path):
            break
        target = path.parent.resolve() / os.readlink(path)
        path = target.parent.resolve() / target.name if target.name not in ("", ".", "..") else target.resolve()
    else:
        raise NotADirectoryError(f"{given}: a symlink loop; expected a folder")
    if link_version(path):
        return path
    if path != given and not path.exists():
        raise NotADirectoryError(
            f"{given}: a symlink to {os.readlink(given)!r}, which does not exist; expected a folder "
            "(remove the link or point it at a folder)"
        )
    if path != given and not path.is_dir():
        raise NotADirectoryError(f"{given}: a symlink to {path}, which is not a folder; expected a folder")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{path}: exists and is not a folder (a file or a special file); expected a folder or nothing "
            "(move it away or choose another output_dir)"
        )
    return path


def recover_directory(folder: str | Path) -> None:
    """Put back the previous version of `folder` if a swap was interrupted between its two renames."""
    folder = Path(folder)
    if folder.is_symlink():
        folder = folder_target(folder)
    if link_version(folder):
        return  # a versioned folder's link is replaced in one rename: nothing to recover
    backup = _backup_of(folder)
    if backup.is_dir() and not backup.is_symlink() and not os.path.lexists(folder):
        os.rename(backup, folder)


def replace_directory(source: str | Path, folder: str | Path) -> None:
    """Move the complete folder `source` to `folder` (same filesystem), replacing any old `folder`.

    On Linux the two folders are exchanged in one atomic step, so `folder` is never missing, even
    to a concurrent reader. Elsewhere the old version is renamed aside, the new one renamed in and
    the old one removed; `recover_directory` undoes a kill between the two renames. A symlink
    `folder` is followed (see `folder_target`); a file there is refused before anything moves.
    A checkpoint (`source` holds a config.json) or a folder already versioned is published as a
    new version instead (`publish_version`)."""
    source, folder = Path(source), folder_target(folder)
    if (source / "config.json").is_file() or link_version(folder):
        publish_version(source, folder)
        return
    apply_umask_modes(source)
    fsync_tree(source)
    recover_directory(folder)
    backup = _backup_of(folder)
    _remove(backup)
    if folder.exists() and exchange_paths(source, folder):
        os.rename(source, backup)  # `source` now holds the old version
    else:
        if folder.exists():
            os.rename(folder, backup)
        os.rename(source, folder)
    _fsync_dir(folder.parent)
    _remove(backup)


def _new_version() -> str:
    """A version id: the time (sortable, readable) and a random part (unique across processes)."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}-{secrets.token_hex(4)}"


def _stamp_version(folder: Path, version: str) -> None:
    """Record `version` in ``folder/config.json`` (how a loader finds the weights of the config it read)."""
    path = folder / "config.json"
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # not JSON (nor UTF-8): left as it is, loaders name the file
        return
    if isinstance(config, dict):
        config[VERSION_KEY] = version
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _prune_versions(folder: Path, keep: set) -> None:
    """Remove the version folders of `folder` other than `keep` (names) that no reader holds
    (renamed to a temporary first, so a kill while removing leaves what the next write removes)."""
    for path in folder.parent.iterdir():
        match = VERSION_FOLDER.fullmatch(path.name)
        if not match or match["name"] != folder.name or path.name in keep or path.is_symlink():
            continue
        with unless_held(path) as free:
            if free:  # else a reader is loading it: a later write removes it
                doomed = path.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)


def publish_version(source: str | Path, folder: str | Path) -> Path:
    """Publish the complete folder `source` as a new version of `folder` (see the module doc):
    rename it to ``.<name>.v<version>``, then point the link `folder` at it in one rename (a folder
    at `folder` from before versions is exchanged for the link, or moved aside on platforms without
    `renameat2`), then remove versions beyond the previous one that no reader holds. Returns the
    version folder."""
    source, folder = Path(source), folder_target(folder)
    version = _new_version()
    _stamp_version(source, version)
    apply_umask_modes(source)
    fsync_tree(source)
    recover_directory(folder)
    previous = os.readlink(folder) if link_version(folder) else None
    target = folder.with_name(version_folder_name(folder.name, version))
    os.rename(source, target)
    link = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target.name, link)
    if not os.path.lexists(folder) or previous:
        os.replace(link, folder)
    elif exchange_paths(link, folder):
        _remove(link)  # the folder from before versions, now at the link's temporary name
    else:
        backup = _backup_of(folder)
        _remove(backup)
        os.rename(folder, backup)
        os.replace(link, folder)
        _remove(backup)
    _fsync_dir(folder.parent)
    _prune_versions(folder, {target.name, previous})
    return target


def remove_stale_temporaries(parent: str | Path, name: str) -> None:
    """Remove temporaries of `name` left in `parent` by writers that were killed (hidden, never loaded)."""
    parent = Path(parent)
    if parent.is_dir():
        for stale in parent.glob(f".{name}.*.tmp"):
            _remove(stale)


def final_path(path: str | Path) -> Path:
    """The path a temporary of `atomic_directory` or `atomic_write_bytes` (``.<name>.<random>.tmp``)
    is renamed to once complete, or the published name of a version folder; any other `path`
    unchanged. Lets code that reads a folder while it is written (a model card built inside the
    run's temporary folder) name it by its final name."""
    path = Path(path)
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name) or VERSION_FOLDER.fullmatch(path.name)
    return path.with_name(match.group(1)) if match else path


@contextlib.contextmanager
def atomic_directory(folder: str | Path):
    """Yield a temporary sibling folder to fill; on success it replaces `folder`.

    The old version is renamed aside, the new one renamed in, the old one removed: a process
    killed while writing leaves the previous complete version in place (and a kill between the two
    renames is undone by `recover_directory`, called here and by loaders)."""
    folder = folder_target(folder)
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
