"""The one rule for local paths in what is published (the recipe saved in a model folder, the model
card): an absolute path inside the working directory is written relative to it, any other is cut
to its last component, so a published file names a file but never where it lay on this machine."""

import os
from pathlib import Path

import yaml


def _publishable(value, root: Path, shortened: list[str], key: str):
    if isinstance(value, (list, tuple)):
        return [_publishable(v, root, shortened, key) for v in value]
    if isinstance(value, dict):
        return {k: _publishable(v, root, shortened, f"{key}.{k}") for k, v in value.items()}
    if not isinstance(value, str) or not (os.path.isabs(value) or value.startswith("~")):
        return value
    path = Path(os.path.normpath(os.path.expanduser(value)))
    if path == root or root in path.parents:
        return path.relative_to(root).as_posix() or "."
    shortened.append(key)
    return path.name


def publishable_settings(values: dict, root: str | Path | None = None) -> tuple[dict, list[str]]:
    """The settings without the machine's absolute paths, for files that are published (the
    recipe in the model folder, the card), and the keys that lost part of a path.

    Rule: an absolute path (or one from ``~``) inside `root` (default: the working directory, where recipes are run
    from) is written relative to it; any other absolute path is cut to its last component (so the
    recipe names the file but not where it lay). Relative paths and other values are kept."""
    root = Path(os.path.abspath(root if root is not None else os.getcwd()))
    shortened: list[str] = []
    clean = {key: _publishable(value, root, shortened, key) for key, value in values.items()}
    return clean, shortened


def config_to_yaml(values: dict, root: str | Path | None = None) -> str:
    """The settings as a YAML recipe that reproduces the run, with absolute paths made relative or
    cut as `publishable_settings` says (a comment lists the keys cut)."""
    clean, shortened = publishable_settings(values, root)
    header = ""
    if shortened:
        header = (
            "# Absolute paths outside the run's working directory were cut to their last component: "
            f"{', '.join(shortened)}\n"
        )
    return header + yaml.safe_dump(clean, sort_keys=True, allow_unicode=True)
