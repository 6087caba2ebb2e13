"""docs/reliability.md matches the tests: every test its table names exists, and every test of the
tests/test_reliability_*.py files is in the table."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
CELL = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _table_rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [row for row in rows if row[-1] != "Test"]  # without the header of each section's table


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_named_in_the_reliability_table_exists():
    rows = _table_rows()
    assert len(rows) >= 30
    for row in rows:
        assert len(row) == 3 and all(row), f"a row needs fault, outcome and test: {row}"
        match = CELL.fullmatch(row[2])
        assert match, f"the test cell must read tests/<file>.py::<test>: {row[2]!r}"
        path, name = REPO / match[1], match[2]
        assert path.is_file(), f"{match[1]} does not exist"
        assert name in _test_names(path), f"{match[1]} has no test {name}"


def test_every_reliability_test_is_in_the_table():
    listed = {(m[1], m[2]) for row in _table_rows() for m in [CELL.fullmatch(row[2])] if m}
    for path in sorted((REPO / "tests").glob("test_reliability_*.py")):
        if path.name == Path(__file__).name:
            continue
        missing = {name for name in _test_names(path) if (f"tests/{path.name}", name) not in listed}
        assert not missing, f"{path.name}: tests not in docs/reliability.md: {sorted(missing)}"
