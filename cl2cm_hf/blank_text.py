"""Blank text, the one rule of every reader and of the search box: a core module, so that a search
checks its query without importing the data layer (`datasets`)."""

from __future__ import annotations

import unicodedata

# Blank text, the one rule of every reader (tables, caption files, id lists, stores, queries): a text
# or id is empty when no character in it is one a reader sees or a tokenizer keeps. Such a caption
# tokenizes to [CLS][SEP] and would train as a real one. Blank characters: every Unicode separator
# (Zs: space, NBSP, ideographic space, figure and narrow spaces, ...; Zl, Zp), control (Cc: tabs,
# line breaks, ...) and format character (Cf: zero-width space and joiners, word joiner, BOM, soft
# hyphen, Mongolian vowel separator, direction marks, tags), combining marks with nothing to combine
# with (Mn, Me: BERT's accent stripping drops them), and the fillers that are letters or symbols in
# Unicode but draw nothing (Hangul fillers, the blank Braille pattern). NUL characters are refused
# anywhere in a text or id.
_BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
_BLANK_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str | None) -> bool:
    """True if `text` is None or holds no character but blank ones (see the rule above)."""
    return text is None or all(c in _BLANK_FILLERS or unicodedata.category(c) in _BLANK_CATEGORIES for c in text)
