"""Range checks shared by the search API and its three command-line tools, and file names made
safe to print: one rule per option, so `build_index(batch_size=0)` and ``cl2cm-index --batch-size
0`` are refused with the same range."""

from __future__ import annotations

import argparse
import numbers
import unicodedata

from cl2cm_hf.errors import CL2CMError

# name -> (lowest, highest) allowed; the highest values guard against typos that would exhaust memory.
LIMITS = {
    "batch_size": (1, 65_536),
    "num_workers": (0, 256),
    "chunk_size": (1, 10_000_000),
    "max_pixels": (1, 2**40),
    "top_k": (1, 100_000),
    "port": (1, 65_535),
    "max_length": (1, 8_192),
    "num_frames": (1, 1_024),
    "ann_budget_mb": (1, 2**30),
    "ray_workers": (1, 100_000),
    "ray_retries": (0, 1_000),
}


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int in ``LIMITS[name]`` (or `low`..`high`); ValueError naming `name` otherwise.
    Booleans and fractional numbers are refused, not truncated."""
    low, high = LIMITS.get(name, (low, high)) if low is None else (low, high)
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or not low <= int(value) <= high:
        raise CL2CMError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def int_option(name: str):
    """An argparse ``type=`` reading an int in ``LIMITS[name]``: argparse then names the option."""
    def parse(text: str) -> int:
        try:
            return check_int(name, int(text))
        except ValueError:
            low, high = LIMITS[name]
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None

    parse.__name__ = name
    return parse


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # reorder what a terminal shows


def _control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def printable(text: str) -> str:
    """`text` with bytes that are not UTF-8 (the surrogate escapes ``os.listdir`` gives them),
    control characters (newlines, terminal escape codes) and bidirectional overrides written as
    backslash escapes: safe for one line of a terminal, a log or a JSON report."""
    return "".join(_escape(c) for c in text)


def _escape(c: str) -> str:
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xDC00:02x}"  # the byte os.listdir could not decode
    return ascii(c)[1:-1] if _control(c) or c in _BIDI or "\ud800" <= c <= "\udfff" else c


def name_problem(text: str) -> str | None:
    """Why a file name cannot be an id in an index (not UTF-8, or control characters), or None."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        return "file name is not valid UTF-8"
    if any(_control(c) for c in text):
        return "file name holds control characters (newline, tab or terminal escape codes)"
    return None
