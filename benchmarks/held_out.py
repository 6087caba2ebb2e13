"""Held-out query sets of the Multi30K benchmark: languages and caption styles no recipe was tuned on.

Same 5 folds and 700/100/200 split as the visible de/fr run; the set's NLLB translations are the
only target-language training text, its human captions the test queries:

- ``cs``: Czech; NLLB Czech training text, the human Czech Task 1 translations of test_2016 as queries;
- ``de_task2``: German independent descriptions; NLLB German training text, the five Task 2 German
  descriptions per test_2016 image as queries (comparable captions, not translations of the English one).

Their caption files are not in every copy of ``../shared``: `missing` names what is absent, and the
benchmark stops with that list rather than measure something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from cl2cm_hf.data.multi30k import TASK2_CAPTIONS, multi30k_queries
from cl2cm_hf.data.multi30k_r50 import SPLIT, _data_root
from cl2cm_hf.data.splits import select_visual


class HeldOut(NamedTuple):
    name: str  # the label of its rows in the results
    lang: str  # the training translations' language (NLLB) and the model's target language
    task: int  # Multi30K task of the test queries (1: translations, 2: independent descriptions)
    note: str


HELD_OUT = {
    "cs": HeldOut("cs", "cs", 1, "Czech: NLLB Czech training text, human Czech Task 1 translations as queries"),
    "de_task2": HeldOut("de_task2", "de", 2, "German independent descriptions: NLLB German training text, the five "
                        "Task 2 German descriptions per image as queries"),
}


def query_files(shared_root, spec: HeldOut) -> list[Path]:
    m30k = _data_root(shared_root) / "multi30k"
    if spec.task == 1:
        return [m30k / "task1" / "raw" / f"{SPLIT}.{spec.lang}.gz"]
    return [m30k / "task2" / "raw" / f"test_2016.{k}.{spec.lang}.gz" for k in range(1, TASK2_CAPTIONS + 1)]


def missing(shared_root, spec: HeldOut) -> list[Path]:
    return [path for path in query_files(shared_root, spec) if not path.is_file()]


def held_out_queries(shared_root, spec: HeldOut, visual_ids):
    """The set's test queries of the images `visual_ids` (language column: the model's target language)."""
    queries = multi30k_queries(_data_root(shared_root) / "multi30k", SPLIT, spec.lang, task=spec.task)
    return select_visual(queries, visual_ids)
