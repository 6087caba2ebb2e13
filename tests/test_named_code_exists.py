"""Every `cl2cm_hf.<module>[.<name>]` that the sources, benchmarks and docs name resolves today, so a
moved function cannot leave a docstring or page pointing at code that is gone."""

import importlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOTTED = re.compile(r"\b(cl2cm_hf(?:\.[A-Za-z_]\w*)+)")
TEXTS = [*(path for folder in ("cl2cm_hf", "benchmarks", "trainer", "docs", "tests") for pattern in ("*.py", "*.md")
           for path in sorted((REPO / folder).rglob(pattern))), REPO / "README.md"]


def resolves(dotted: str) -> bool:
    """Import the longest importable module prefix of `dotted`, then look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_every_named_cl2cm_hf_module_and_function_exists():
    missing = sorted({f"{path.relative_to(REPO)}: {name}" for path in TEXTS if path.is_file()
                      for name in DOTTED.findall(path.read_text(encoding="utf-8")) if not resolves(name)})
    assert not missing, "named but not found (moved or renamed?):\n" + "\n".join(missing)
