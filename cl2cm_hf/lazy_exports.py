"""PEP 562 lazy exports, written once for the package's ``__init__`` files: a name's module is imported
on its first use, so importing a package imports none of its modules (a one-call search imports
neither torch nor transformers)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str], first: str | None = None) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of `package` (whose globals are `namespace`) for `exports`
    (name -> its module, relative to the package); `first`: a module imported before any name is."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if first is not None:
            importlib.import_module(first)
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(exports))

    return __getattr__, __dir__
