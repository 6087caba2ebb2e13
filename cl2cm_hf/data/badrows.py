"""What a loader does with a bad row: stop naming the file and line (``on_bad_row="error"``, the
default) or leave the row out, count it and list it (``on_bad_row="skip"``).

Skipping never drops a row silently: every skipped row is logged as a warning (a count per file
plus the first one) and recorded in a `SkippedRows` list, which a training run writes to
``<output_dir>/skipped_rows.jsonl``. Only row-level faults are skippable (an empty or null text, a
value of the wrong type in one row, an unparsable line, a duplicate or unknown id, a feature row
with NaN/Inf). Faults of the whole file (truncated gzip or safetensors, a column of the wrong type,
missing columns, mismatched counts) stop the run in both modes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from cl2cm_hf.data.schemas import DataFormatError
from cl2cm_hf.errors import CL2CMError

ON_BAD_ROW = ("error", "skip")
SKIPPED_ROWS_FILE = "skipped_rows.jsonl"
_CONTENT_CHARS = 500

logger = logging.getLogger("cl2cm_hf.data")


class SkippedRows:
    """Rows left out under ``on_bad_row="skip"``: one record per row (file, position, reason, content)."""

    def __init__(self):
        self.records: list[dict] = []

    def add(self, source: str, position: str | None, reason: str, visual_id=None, content=None) -> None:
        record = {"file": str(source)}
        if position:
            unit, _, number = position.partition(" ")
            record[unit] = int(number) if number.isdigit() else number
        if visual_id is not None:
            record["visual_id"] = visual_id
        record["reason"] = reason
        if content is not None:
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=repr)
            record["content"] = text[:_CONTENT_CHARS]
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def by_file(self) -> dict[str, int]:
        return dict(Counter(r["file"] for r in self.records))

    def to_jsonl(self) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)

    def write(self, path: str | Path) -> Path:
        """Write the records to `path` (jsonl) atomically."""
        from cl2cm_hf.atomic import atomic_write_text

        atomic_write_text(path, self.to_jsonl())
        return Path(path)


class RowPolicy:
    """A loader's handling of bad rows: `bad(...)` raises `DataFormatError` (error mode) or records."""

    def __init__(self, on_bad_row: str = "error", skipped: SkippedRows | None = None):
        if on_bad_row not in ON_BAD_ROW:
            raise CL2CMError(f"on_bad_row={on_bad_row!r}; expected one of {list(ON_BAD_ROW)}")
        self.skip = on_bad_row == "skip"
        self.skipped = skipped if skipped is not None else SkippedRows()
        self._start = len(self.skipped)

    @classmethod
    def of(cls, on_bad_row: str | RowPolicy = "error", skipped: SkippedRows | None = None) -> RowPolicy:
        return on_bad_row if isinstance(on_bad_row, RowPolicy) else cls(on_bad_row, skipped)

    def bad(self, source, position: str | None, reason: str, visual_id=None, content=None) -> None:
        """A bad row at `position` (``"line 7"``, ``"row 3"``) of `source`."""
        if not self.skip:
            where = f"{source} {position}" if position else f"{source}"
            who = f" (visual_id={visual_id!r})" if visual_id is not None else ""
            raise DataFormatError(f"{where}{who}: {reason}")
        self.skipped.add(source, position, reason, visual_id, content)

    def warn(self, source, kept: int) -> None:
        """Log the rows of `source` skipped since the last call; no row left at all is an error."""
        new = [r for r in self.skipped.records[self._start :] if r["file"] == str(source)]
        self._start = len(self.skipped)
        if new:
            first = ", ".join(f"{k} {v}" for k, v in new[0].items() if k not in ("file", "content"))
            logger.warning(
                "%s: skipped %d bad row(s) (on_bad_row: skip), kept %d; first: %s", source, len(new), kept, first
            )
        if kept == 0:
            raise DataFormatError(f"{source}: no valid rows" + (f" ({len(new)} bad rows skipped)" if new else ""))


def report_skipped_rows(skipped: SkippedRows, on_bad_row: str, output_dir: str | Path, write: bool = True) -> Path | None:
    """After loading a run's data: under ``on_bad_row: skip`` write ``<output_dir>/skipped_rows.jsonl``
    (empty when nothing was skipped, so a stale list never survives) and log the total."""
    if on_bad_row != "skip":
        return None
    path = Path(output_dir) / SKIPPED_ROWS_FILE
    if write:
        skipped.write(path)
    if len(skipped):
        per_file = ", ".join(f"{name}: {count}" for name, count in skipped.by_file().items())
        logger.warning("skipped %d bad row(s) in total (%s); listed in %s", len(skipped), per_file, path)
    return path
