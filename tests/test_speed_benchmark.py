"""benchmarks/speed.py's page writer: a run of the main sections or of `neighbour` rewrites only its
own part of the results page, and the runner documents every section it runs."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import speed
from benchmarks.speed_bench.report import NEIGHBOUR_BLOCK, write_report

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`


def _row(section: str, what: str) -> dict:
    return dict(section=section, what=what, measured="1 ms", reference="ref 2 ms", ratio=2.0, goal="-", met="-",
                threads=1, note="")


def test_a_run_of_either_part_keeps_the_other_part_of_the_page(tmp_path):
    page = tmp_path / "speed.md"
    write_report(page, [_row("ot", "first ot"), _row("neighbour", "first neighbour")], ["- run: first"])
    main_first, block_first = page.read_text().split(NEIGHBOUR_BLOCK)
    assert "first ot" in main_first and "first neighbour" in block_first

    write_report(page, [_row("eval", "second eval")], ["- run: second"])
    main_second, block = page.read_text().split(NEIGHBOUR_BLOCK)
    assert block == block_first
    assert "second eval" in main_second and "- run: second" in main_second and "first ot" not in main_second

    write_report(page, [_row("neighbour", "third neighbour")], ["- run: third"])
    main, block_third = page.read_text().split(NEIGHBOUR_BLOCK)
    assert main == main_second
    assert "third neighbour" in block_third and "first neighbour" not in block_third


def test_a_first_run_without_neighbour_writes_no_neighbour_block(tmp_path):
    page = tmp_path / "results" / "speed.md"
    write_report(page, [_row("ot", "ot only")], ["- run: only"])
    text = page.read_text()
    assert NEIGHBOUR_BLOCK not in text
    assert text.startswith("# Speed benchmarks\n") and "| ot | ot only |" in text and "## Notes" in text


def test_the_runner_documents_every_section_it_runs():
    documented = re.findall(r"^  (\w+) ", speed.__doc__.split("Sections", 1)[1], flags=re.MULTILINE)
    assert documented == list(speed.SECTIONS)
