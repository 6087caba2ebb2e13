"""Multi30K raw layout (github.com/multi30k/dataset, folder ``data/``) as queries and translated pairs.

- Task 1: ``task1/raw/{split}.{lang}.gz``, one caption per line, line *i* describes image *i* of
  ``task1/image_splits/{split}.txt`` (en plus its professional translations de/fr/cs).
- Task 2: ``task2/raw/{split}.{k}.{lang}.gz`` for k = 1..5, aligned with
  ``task2/image_splits/{split}_images.txt`` (five independent descriptions per image, en and de).

Split names are accepted in either task's spelling (``test_2016`` and ``test_2016_flickr``).
Visual ids are the image file names of the split file (``1000092795.jpg``). Every caption file
must have exactly as many lines as its image split; an empty caption is an error naming its line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict

from cl2cm_hf.data.schemas import PAIR_FEATURES_WITH_CAPTION_ID, DataFormatError, make_pairs, make_queries
from cl2cm_hf.data.textfiles import read_captions, read_ids
from cl2cm_hf.errors import CL2CMError

TASK2_CAPTIONS = 5


def _split_file(root: Path, split: str, task: int) -> tuple[Path, str]:
    """The image split file of `split` for `task` and the split name used by that task's files."""
    if task == 1:
        candidates = [split, f"{split}_flickr"]
        make = lambda name: root / "task1" / "image_splits" / f"{name}.txt"  # noqa: E731
    elif task == 2:
        candidates = [split, split.removesuffix("_flickr")]
        make = lambda name: root / "task2" / "image_splits" / f"{name}_images.txt"  # noqa: E731
    else:
        raise CL2CMError(f"task={task!r}: Multi30K has task 1 and task 2")
    for name in candidates:
        if make(name).is_file():
            return make(name), name
    raise FileNotFoundError(f"no image split for split {split!r} of task {task}: {make(split)} does not exist")


def multi30k_image_ids(root: str | os.PathLike, split: str, task: int = 1) -> list[str]:
    """Image file names of `split`, in the order of the caption files."""
    return read_ids(_split_file(Path(root), split, task)[0])


def _caption_files(root: Path, split: str, lang: str, task: int) -> tuple[list[str], list[Path], Path]:
    split_file, name = _split_file(root, split, task)
    raw = root / f"task{task}" / "raw"
    if task == 1:
        files = [raw / f"{name}.{lang}.gz"]
    else:
        files = [raw / f"{name}.{k}.{lang}.gz" for k in range(1, TASK2_CAPTIONS + 1)]
    return read_ids(split_file), files, split_file


def multi30k_captions(root: str | os.PathLike, split: str, lang: str, task: int = 1) -> tuple[list[str], list[list[str]]]:
    """Image ids and, per caption file (1 for task 1, 5 for task 2), the captions aligned with them."""
    image_ids, files, split_file = _caption_files(Path(root), split, lang, task)
    captions = [read_captions(f, expected=len(image_ids), against=str(split_file)) for f in files]
    return image_ids, captions


def multi30k_queries(root: str | os.PathLike, split: str, lang: str, task: int = 1) -> Dataset:
    """Query rows ``(visual_id, text, lang)``: one per image (task 1) or five per image (task 2,
    ordered image by image, caption 1..5)."""
    image_ids, captions = multi30k_captions(root, split, lang, task)
    ids = [image for image in image_ids for _ in captions]
    texts = [files[i] for i in range(len(image_ids)) for files in captions]
    return make_queries({"visual_id": ids, "text": texts, "lang": [lang] * len(ids)}, f"multi30k {split} task{task} {lang}")


def load_multi30k(root: str | os.PathLike, split: str, langs: Sequence[str] = ("en",), task: int = 1) -> DatasetDict:
    """Queries of several languages of one split: ``DatasetDict`` keyed by language."""
    return DatasetDict({lang: multi30k_queries(root, split, lang, task) for lang in langs})


def multi30k_pairs(
    root: str | os.PathLike,
    split: str,
    target_lang: str,
    translations: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    task: int = 1,
    source_lang: str = "en",
    first_caption_only: bool = False,
) -> Dataset:
    """Translated pairs ``(visual_id, source_text, target_text, target_lang, caption_id)``.

    Sources are the `source_lang` captions of `task`. Targets are read from `translations`:
    - ``None`` (task 1 only): the professional translations ``task1/raw/{split}.{target_lang}.gz``
      (the supervised upper bound, not the MT setting);
    - one file (plain or gz) with one line per image: for task 1 the translation of the image's
      caption; for task 2 the image's single translation (e.g. MT of caption 1) paired with every
      caption of the image, or with caption 1 only when `first_caption_only`;
    - task 2, five files: file *k* translates caption *k*.
    ``caption_id`` is ``"{image}#{k}"`` with k the 1-based caption number.
    """
    root = Path(root)
    image_ids, sources = multi30k_captions(root, split, source_lang, task)
    split_file = _split_file(root, split, task)[0]
    if translations is None:
        if task != 1:
            raise CL2CMError("Multi30K task 2 captions are not translations of each other: pass translations=")
        translations = [root / "task1" / "raw" / f"{_split_file(root, split, 1)[1]}.{target_lang}.gz"]
    elif isinstance(translations, (str, os.PathLike)):
        translations = [translations]
    if len(translations) not in (1, len(sources)):
        raise CL2CMError(f"expected 1 or {len(sources)} translation files for task {task}, got {len(translations)}")
    targets = [read_captions(f, expected=len(image_ids), against=str(split_file)) for f in translations]
    use = sources[:1] if first_caption_only else sources
    columns: dict[str, list[str]] = {name: [] for name in PAIR_FEATURES_WITH_CAPTION_ID}
    for i, image in enumerate(image_ids):
        for k, captions in enumerate(use):
            target = targets[k if len(targets) > 1 else 0][i]
            columns["visual_id"].append(image)
            columns["source_text"].append(captions[i])
            columns["target_text"].append(target)
            columns["target_lang"].append(target_lang)
            columns["caption_id"].append(f"{image}#{k + 1}")
    if not columns["visual_id"]:
        raise DataFormatError(f"{split_file}: no images")
    return make_pairs(columns, f"multi30k {split} task{task} pairs {source_lang}-{target_lang}")
