"""Refuse checkpoints whose `auto_map` would make transformers import code from outside them.

With ``trust_remote_code=True`` transformers imports the module an ``auto_map`` entry names
(``"module.Class"``, the file ``module.py`` of the checkpoint). An entry with an absolute path
(``"/tmp/x.Class"``), a relative path (``"../x.Class"``, ``"sub/x.Class"``), a reference to another
repository (``"owner/repo--module.Class"``) or a module file that is a symlink out of the folder
makes it import and run code that is not part of the checkpoint. `check_auto_map` is the one place
that decides; call it on every checkpoint folder before loading it with remote code.

The rule: every entry (a string, or a list of strings and nulls as tokenizers write) is
``<module>.<Class>`` with both parts Python identifiers, and, for a folder, ``<module>.py`` is a
regular file inside the folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_REFERENCE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


class UnsafeCheckpointError(ValueError):
    """A checkpoint's `auto_map` points at code outside the checkpoint (the message names the entry)."""


def _references(auto_map) -> list[tuple[str, object]]:
    """(entry name, reference) for every reference of an auto_map; lists give ``name[i]``."""
    pairs = []
    for key, value in auto_map.items():
        if isinstance(value, (list, tuple)):
            pairs += [(f"[{key!r}][{i}]", item) for i, item in enumerate(value) if item is not None]
        else:
            pairs.append((f"[{key!r}]", value))
    return pairs


def _check_one(source: str, auto_map, folder: Path | None) -> None:
    if auto_map is None:
        return
    if not isinstance(auto_map, dict):
        raise UnsafeCheckpointError(f"{source}: auto_map is {type(auto_map).__name__}; expected a mapping")
    for entry, reference in _references(auto_map):
        where = f"{source}: auto_map{entry} = {reference!r}"
        match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        if match is None:
            raise UnsafeCheckpointError(
                f"{where} is refused: expected '<module>.<Class>' naming a module file of the checkpoint itself "
                "(no path, no '--' reference to another repository)"
            )
        if folder is None:
            continue
        module = folder / f"{match[1]}.py"
        if not module.is_file():
            raise UnsafeCheckpointError(f"{where} is refused: the checkpoint has no file {module.name}")
        resolved, root = module.resolve(), folder.resolve()
        if resolved.parent != root:
            raise UnsafeCheckpointError(f"{where} is refused: {module.name} links to {resolved}, outside the checkpoint")


def check_auto_map(folder_or_config: str | os.PathLike | dict) -> None:
    """Raise `UnsafeCheckpointError` naming the file and entry if an ``auto_map`` of a checkpoint
    folder (every ``*config.json`` in it) or of a config mapping points outside the checkpoint."""
    if isinstance(folder_or_config, dict):
        _check_one("config", folder_or_config.get("auto_map"), None)
        return
    folder = Path(folder_or_config)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder")
    for path in sorted(folder.glob("*config.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnsafeCheckpointError(f"{path}: not valid JSON ({err})") from None
        if isinstance(config, dict):
            _check_one(str(path), config.get("auto_map"), folder)


__all__ = ["UnsafeCheckpointError", "check_auto_map"]
