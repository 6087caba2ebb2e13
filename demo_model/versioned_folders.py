"""Checkpoint folders published as versions behind a symlink, and readers that see one version.

transformers opens a checkpoint's files one after the other, each through the path it was given
(config.json, then the weights, the tokenizer, the processor files). If the folder is replaced in
between, one load mixes two versions. So a checkpoint folder ``<parent>/<name>`` is published
(`cl2cm_hf.atomic.atomic_directory`) as ``<parent>/.<name>.v<version>/`` with ``<name>`` a symlink
to it, replaced in one atomic rename; a version folder never changes once published, and the
writer keeps the previous one and any a reader holds (a shared `flock` on the folder).

A reader resolves the link once (`pinned_folder`) and reads everything from the version folder.
``config.json`` records its version (`VERSION_KEY`), so a model class handed a config of one
version (``AutoModel`` reads the config before the model class reads the weights) loads the
weights of that same version.

This file is copied into every checkpoint with the model code: standard library only.
"""

import contextlib
import json
import os
import re

try:
    import fcntl
except ImportError:  # not POSIX: no reader locks (the writer still keeps the previous version)
    fcntl = None

VERSION_KEY = "folder_version"
VERSION_FOLDER = re.compile(r"\.(?P<name>.+)\.v(?P<version>\d{8}T\d{6}\.\d{6}-[0-9a-f]{8})")


def version_folder_name(name: str, version: str) -> str:
    """The hidden folder name of version `version` of the folder `name`."""
    return f".{name}.v{version}"


def link_version(path) -> str | None:
    """The version a symlink `path` points to when it is the published name of a versioned folder
    (a link to ``.<its name>.v<version>`` beside it); None for anything else."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    match = VERSION_FOLDER.fullmatch(target)
    return match["version"] if match and match["name"] == os.path.basename(os.path.normpath(path)) else None


def recorded_version(folder) -> str | None:
    """The version a folder's config.json records (None when it records none or is unreadable)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config.get(VERSION_KEY) if isinstance(config, dict) else None


def _flock(fd: int, operation: int) -> bool:
    """`flock`; False only when another process holds a conflicting lock (a filesystem without
    locks counts as unlocked)."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def _locked(folder):
    """An open descriptor of `folder` holding a shared lock, or None if `folder` is gone (or was
    renamed away while the lock was taken)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    _flock(fd, fcntl.LOCK_SH)
    try:
        if os.path.samestat(os.stat(folder), os.fstat(fd)):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


@contextlib.contextmanager
def pinned_folder(path, version: str | None = None):
    """Yield ``(folder, matches)``: the one real folder to read every file of checkpoint `path`
    from, held so that no writer removes it meanwhile. With `version` (from a config already read),
    the folder of that version when it is still kept; `matches` is False when it is not (read the
    config of `folder` again). A hub id or any non-folder is yielded unchanged."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        yield path, True
        return
    for _ in range(100):  # each retry means a writer removed the folder just resolved
        real = os.path.realpath(path)
        matches = version is None or recorded_version(real) in (None, version)
        if not matches:
            named = VERSION_FOLDER.fullmatch(os.path.basename(real))
            wanted = os.path.join(os.path.dirname(real), version_folder_name(named["name"], version)) if named else None
            if wanted and os.path.isdir(wanted):
                real, matches = wanted, True
        if fcntl is None:
            yield real, matches  # no reader locks here: the writer keeps the previous version
            return
        fd = _locked(real)
        if fd is not None:
            break
    else:
        raise OSError(f"{path}: replaced 100 times while being opened")
    try:
        yield real, matches
    finally:
        os.close(fd)


@contextlib.contextmanager
def unless_held(folder):
    """Yield True, holding an exclusive lock on `folder`, when no reader holds it; else False."""
    if fcntl is None:
        yield True
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


__all__ = ["VERSION_KEY", "link_version", "pinned_folder", "recorded_version", "unless_held", "version_folder_name"]
