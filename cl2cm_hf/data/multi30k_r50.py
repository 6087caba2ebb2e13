"""The offline real benchmark: Multi30K test_2016 (1000 Flickr30K images) under ``../shared/data``.

- visual items: the images of ``multi30k/task1/image_splits/test_2016_flickr.txt``, features from
  ``multi30k-resnet50/test_2016_flickr-resnet50-avgpool.npy`` (1000 x 2048 float16, memory-mapped,
  rows in that order);
- English captions: Task 2's five per image (``multi30k/task2/raw/test_2016.{1..5}.en.gz``);
- training translations: NLLB-3.3B output ``nllb-flickr30k-200/{deu,fra,ces}_Latn.txt``, one line
  per image translating English caption 1. Pairs: one per English caption, each with the image's
  single MT sentence (5 pairs per image and language; caption 1's pair is the true translation
  pair, captions 2-5 pair a comparable description with it); ``first_caption_only`` keeps caption 1;
- queries: the five English captions (``lang="en"``) and the human Task 1 translations
  ``multi30k/task1/raw/test_2016_flickr.{de,fr}.gz`` (one per image).

Evaluation is 5-fold cross-validation over images (`multi30k_r50_fold`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import DatasetDict, concatenate_datasets

from cl2cm_hf.data.features import VisualFeatureStore
from cl2cm_hf.data.multi30k import multi30k_image_ids, multi30k_pairs, multi30k_queries
from cl2cm_hf.data.schemas import DataFormatError
from cl2cm_hf.data.splits import RetrievalData, kfold_visual_ids, select_visual
from cl2cm_hf.data.textfiles import read_ids
from cl2cm_hf.errors import CL2CMError

SPLIT = "test_2016_flickr"
NLLB_FILES = {"de": "deu_Latn.txt", "fr": "fra_Latn.txt", "cs": "ces_Latn.txt"}
FEATURES_FILE = Path("multi30k-resnet50") / "test_2016_flickr-resnet50-avgpool.npy"


def _data_root(shared_root: str | os.PathLike) -> Path:
    root = Path(shared_root)
    for candidate in (root, root / "data"):
        if (candidate / "multi30k").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no multi30k/ folder here or under data/ (expected the shared data folder)")


def load_multi30k_r50(
    shared_root: str | os.PathLike, langs: Sequence[str] = ("de", "fr"), first_caption_only: bool = False
) -> dict:
    """Everything of the benchmark: ``{"features", "visual_ids", "pairs", "queries", "langs"}``.

    ``pairs`` holds all `langs` (column ``target_lang``); ``queries`` the English captions and the
    human translations of every language in `langs` (column ``lang``). `shared_root` is the shared
    folder or its ``data/`` folder.
    """
    root = _data_root(shared_root)
    m30k = root / "multi30k"
    unknown = [lang for lang in langs if lang not in NLLB_FILES]
    if unknown:
        raise CL2CMError(f"no NLLB translations for {unknown}; available: {sorted(NLLB_FILES)}")
    visual_ids = multi30k_image_ids(m30k, SPLIT, task=1)
    nllb = root / "nllb-flickr30k-200"
    if read_ids(nllb / "filenames.txt") != visual_ids:
        raise DataFormatError(f"{nllb / 'filenames.txt'}: image order differs from {m30k}/task1/image_splits/{SPLIT}.txt")
    features = VisualFeatureStore.from_npy(root / FEATURES_FILE, visual_ids)
    pairs = concatenate_datasets([
        multi30k_pairs(m30k, SPLIT, lang, translations=nllb / NLLB_FILES[lang], task=2, first_caption_only=first_caption_only)
        for lang in langs
    ])
    queries = [multi30k_queries(m30k, SPLIT, "en", task=2)]
    for lang in langs:
        human = m30k / "task1" / "raw" / f"{SPLIT}.{lang}.gz"
        if not human.is_file():
            raise CL2CMError(
                f"{human}: no human {lang} translation of test_2016 (Multi30K has de and fr); drop {lang!r} from langs"
            )
        queries.append(multi30k_queries(m30k, SPLIT, lang, task=1))
    queries = concatenate_datasets(queries)
    return {"features": features, "visual_ids": visual_ids, "pairs": pairs, "queries": queries, "langs": tuple(langs)}


def multi30k_r50_fold(data: dict, fold: int, num_folds: int = 5, seed: int = 0, val_items: int = 0) -> RetrievalData:
    """Fold `fold` of the cross-validation over images (800 train / 200 test with 5 folds).

    With `val_items` > 0, that many training images become a validation split (pairs and queries),
    for checkpoint selection that never looks at the test images.
    """
    folds = kfold_visual_ids(data["visual_ids"], num_folds, seed)
    if not 0 <= fold < num_folds:
        raise CL2CMError(f"fold={fold}; expected 0..{num_folds - 1}")
    train_ids, test_ids = folds[fold]
    if not 0 <= val_items < len(train_ids):
        raise CL2CMError(f"val_items={val_items}; expected 0..{len(train_ids) - 1}")
    cut = len(train_ids) - val_items
    splits = {"train": train_ids[:cut], "validation": train_ids[cut:], "test": test_ids}
    if not val_items:
        del splits["validation"]
    pairs = DatasetDict({name: select_visual(data["pairs"], ids) for name, ids in splits.items()})
    queries = DatasetDict({name: select_visual(data["queries"], ids) for name, ids in splits.items() if name != "train"})
    return RetrievalData(pairs, queries, data["features"])
