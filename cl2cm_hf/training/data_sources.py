"""The data of a run, whatever its source: translated training pairs, validation pairs and queries,
test queries, the visual feature store and the tokenizer."""

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from transformers import AutoImageProcessor, AutoTokenizer

from cl2cm_hf.data import (
    ImagePathStore,
    SkippedRows,
    VisualFeatureStore,
    build_demo_world,
    load_multi30k_r50,
    load_pairs,
    load_queries,
    multi30k_pairs,
    multi30k_queries,
    multi30k_r50_fold,
    nrccr_pairs,
    nrccr_queries,
    open_visual_store,
    report_skipped_rows,
    train_demo_tokenizer,
)
from cl2cm_hf.data.demo_video_files import video_file_store
from cl2cm_hf.data.image_paths import IMAGES_FILE
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.training.model_setup import scratch_image_processor
from cl2cm_hf.training.recipe import global_batch
from cl2cm_hf.video_processing_cl2cm import video_processor_for


@dataclass
class RunData:
    name: str
    train_pairs: Dataset
    validation_pairs: Dataset
    validation_queries: Dataset
    test_queries: Dataset
    features: VisualFeatureStore | ImagePathStore  # an image store in backbone mode
    tokenizer: object
    gallery_captions: dict[str, str]  # visual_id -> an English caption, to show search results


def first_caption_pairs(data: RunData) -> RunData:
    """`data` with only the pairs of caption 1 (caption_id ``"<visual_id>#1"``) for training and validation."""
    for name in ("train_pairs", "validation_pairs"):
        if "caption_id" not in getattr(data, name).column_names:
            raise CL2CMError(f"cl_first_caption_only: the {data.name} {name} have no caption_id column to pick caption 1 by")
    # `select` of the kept indices: `Dataset.filter` would print a progress bar for a few thousand rows.
    first = lambda pairs: pairs.select([i for i, c in enumerate(pairs["caption_id"]) if c.endswith("#1")])  # noqa: E731
    return replace(data, train_pairs=first(data.train_pairs), validation_pairs=first(data.validation_pairs))


def _english_captions(queries: Dataset) -> dict[str, str]:
    return {v: t for v, t, lang in zip(queries["visual_id"], queries["text"], queries["lang"]) if lang == "en"}


def _tokenizer(data_args, model_args, texts: list[str]):
    """The configured tokenizer, the text tower's own, or one trained on the run's training text."""
    if data_args.tokenizer:
        return AutoTokenizer.from_pretrained(data_args.tokenizer)
    if model_args.text_model:
        return AutoTokenizer.from_pretrained(model_args.text_model)
    return train_demo_tokenizer(texts, vocab_size=data_args.tokenizer_vocab_size)


def demo_world(data_args, seed: int):
    """The demo world that a run's data settings and seed describe (the one its data comes from)."""
    return build_demo_world(
        seed=seed,
        num_items=data_args.demo_items,
        val_items=data_args.demo_validation_items,
        test_items=data_args.demo_test_items,
        mt_noise=data_args.demo_mt_noise,
        mt_semantic_errors=data_args.demo_mt_semantic_errors,
        confusable=data_args.demo_confusable,
        visual_kind=data_args.demo_visual_kind,
        feature_dim=data_args.demo_feature_dim,
        target_langs=tuple(data_args.target_langs),
    )


def _demo(data_args, seed: int, training_args):
    world = demo_world(data_args, seed)
    features = _demo_pictures(world, data_args, seed, training_args) if data_args.demo_pixels else world.features
    return "demo world", world.pairs, world.queries, features, world.tokenizer_corpus()


def _demo_pictures(world, data_args, seed: int, training_args) -> ImagePathStore:
    """The world's rendered pictures as an image store (its image processor comes from the model
    settings), under demo_image_cache (default <output_dir>/demo_pictures). Rendered once: the main
    process draws the folder, the others (and later runs of the same world) reuse it."""
    cache = Path(data_args.demo_image_cache or Path(training_args.output_dir) / "demo_pictures")
    folder = cache / f"{data_args.demo_visual_kind}_seed{seed}_{data_args.demo_image_size}px"
    with training_args.main_process_first(desc="demo pictures"):
        if data_args.demo_video_files:
            return video_file_store(world, folder.with_name(folder.name + "_mp4"), data_args.demo_image_size)
        return world.image_store(folder, data_args.demo_image_size)


def _files(data_args, seed: int, skipped: SkippedRows | None = None):
    missing = [k for k in ("train_file", "validation_file", "test_file", "features_file") if not getattr(data_args, k)]
    if missing:
        raise CL2CMError(f"dataset: files needs {', '.join(missing)}")
    # Every row checked at load (on_bad_row: error stops naming file and line, skip lists the row).
    policy = {"on_bad_row": data_args.on_bad_row, "skipped": skipped}
    features = _visual_store(data_args, policy)
    pairs = _split_validation_pairs(load_pairs(data_args.train_file, visual_ids=features, **policy), seed, data_args.train_file, 0.05)
    queries = {
        split: load_queries(getattr(data_args, f"{split}_file"), visual_ids=features, **policy) for split in ("validation", "test")
    }
    texts = list(pairs["train"]["source_text"]) + list(pairs["train"]["target_text"])
    return Path(data_args.train_file).stem, pairs, queries, features, texts


@functools.lru_cache(maxsize=4)
def _load_r50(shared_root: str, langs: tuple[str, ...], first_caption_only: bool) -> dict:
    """The offline benchmark's data, read once per process (a benchmark runs many folds and systems)."""
    return load_multi30k_r50(shared_root, langs, first_caption_only=first_caption_only)


def _multi30k_r50(data_args, seed: int):
    """The offline real benchmark (1000 Multi30K test_2016 images under shared_root): one fold of the
    cross-validation over images; validation images are carved from the fold's training images."""
    if data_args.fold is None:
        raise CL2CMError(f"dataset: multi30k_r50 needs fold (0..{data_args.num_folds - 1})")
    if data_args.validation_items < 1:
        raise CL2CMError("dataset: multi30k_r50 needs validation_items >= 1 (selection never looks at the test images)")
    data = _load_r50(str(Path(data_args.shared_root).resolve()), tuple(data_args.target_langs), data_args.first_caption_only)
    fold = multi30k_r50_fold(
        data, data_args.fold, data_args.num_folds, seed=data_args.fold_seed, val_items=data_args.validation_items
    )
    pairs = {"train": fold.pairs["train"], "validation": fold.pairs["validation"]}
    queries = {"validation": fold.queries["validation"], "test": fold.queries["test"]}
    texts = list(pairs["train"]["source_text"]) + list(pairs["train"]["target_text"])
    return f"multi30k_r50 fold {data_args.fold}", pairs, queries, fold.features, texts


def _visual_store(data_args, policy: dict | None = None):
    """The run's visual items (`features_file`): an image store (a folder with images.json, read by
    a vision backbone), a saved feature store (a folder, or its features.safetensors), or a ``.npy``
    array whose row ids are in `features_ids_file`. `policy`: `on_bad_row` and `skipped`, to check
    every row now."""
    path = _data_path(data_args, data_args.features_file)
    policy = policy or {}
    if path.suffix.lower() == ".npy":
        if not data_args.features_ids_file:
            raise CL2CMError(f"features_file={str(path)!r} is a .npy array: set features_ids_file (the id of each row)")
        return VisualFeatureStore.from_npy(path, _data_path(data_args, data_args.features_ids_file), **policy)
    if path.is_file() and path.suffix.lower() != ".safetensors":
        raise CL2CMError(
            f"features_file={str(path)!r}: expected a feature store folder (features.safetensors + ids.json, or its "
            f"features.safetensors), an image store folder ({IMAGES_FILE}), or a .npy array with features_ids_file"
        )
    return open_visual_store(path, **policy)


def _check_visual_input(features, model_args, data_args) -> None:
    """Pixels for a vision backbone (decoded by its image processor), features otherwise."""
    pixels = isinstance(features, ImagePathStore)
    if pixels != (model_args.visual_encoder_type == "backbone"):
        raise CL2CMError(
            f"visual_encoder_type={model_args.visual_encoder_type!r} but the visual items are "
            f"{'images' if pixels else 'precomputed features'}: backbone reads an image store "
            f"(features_file: a folder with {IMAGES_FILE}; demo: demo_pixels: true), features reads a feature store"
        )
    if pixels:
        features.image_processor = _image_processor(model_args)
        # Frames prepared as images are; saved in the checkpoint, and what decodes a store of video files.
        features.video_processor = video_processor_for(features.image_processor, data_args.video_num_frames, data_args.video_fps)


def _image_processor(model_args):
    """The image processor of the run's vision backbone (built from vision_config, or vision_model's own)."""
    if model_args.vision_config:
        return scratch_image_processor(model_args.vision_config)
    if not model_args.vision_model:
        raise CL2CMError("visual_encoder_type: backbone needs vision_model (a folder or hub id) or vision_config")
    try:
        return AutoImageProcessor.from_pretrained(model_args.vision_model)
    except OSError as err:
        raise CL2CMError(f"vision_model={model_args.vision_model!r} has no image processor to decode images ({err})") from None


def _data_path(data_args, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() or not data_args.data_root else Path(data_args.data_root) / path


def _per_lang(data_args, key: str, lang: str) -> Path:
    template = getattr(data_args, key)
    if "{lang}" not in template and len(data_args.target_langs) > 1:
        raise CL2CMError(f"{key}={template!r}: several target languages need a '{{lang}}' placeholder in the file name")
    return _data_path(data_args, template.format(lang=lang))


def _require(data_args, dataset: str, keys) -> None:
    missing = [k for k in keys if not getattr(data_args, k)]
    if missing:
        raise CL2CMError(f"dataset: {dataset} needs {', '.join(missing)}")


def _split_validation_pairs(pairs: Dataset, seed: int, source, fraction: float | None = None) -> dict[str, Dataset]:
    """Training pairs and a held-out validation split: `fraction` of the rows (default 5%, at most
    1000), at least one row, and at least one row left for training; `source` names the data."""
    fraction = fraction if fraction is not None else min(0.05, 1000 / max(1, len(pairs)))
    if math.ceil(fraction * len(pairs)) >= len(pairs):
        raise CL2CMError(
            f"{source}: {len(pairs)} training row(s) are too few for a validation split of {fraction:.0%} of the rows "
            "(at least 1 row held out and 1 left for training): give at least 2 rows"
        )
    held = pairs.train_test_split(test_size=fraction, seed=seed)
    return {"train": held["train"], "validation": held["test"]}


def _multi30k(data_args, seed: int):
    """Multi30K in its raw layout (data_root = the dataset's data/ folder with task1/ and task2/): English
    captions of source_task paired with the MT files, human task-1 translations as queries."""
    _require(data_args, "multi30k", ("data_root", "mt_train_file", "features_file"))
    root, langs = Path(data_args.data_root), data_args.target_langs

    def pairs_of(split: str, key: str) -> Dataset:
        return concatenate_datasets([
            multi30k_pairs(
                root, split, lang, translations=_per_lang(data_args, key, lang), task=data_args.source_task,
                first_caption_only=data_args.first_caption_only,
            )
            for lang in langs
        ])

    train = pairs_of(data_args.train_split, "mt_train_file")
    if data_args.mt_validation_file:
        pairs = {"train": train, "validation": pairs_of(data_args.validation_split, "mt_validation_file")}
    else:
        pairs = _split_validation_pairs(train, seed, f"multi30k {data_args.train_split}")
    queries = {
        name: concatenate_datasets([multi30k_queries(root, split, lang, task=1) for lang in ("en", *langs)])
        for name, split in (("validation", data_args.validation_split), ("test", data_args.test_split))
    }
    texts = list(pairs["train"]["source_text"]) + list(pairs["train"]["target_text"])
    return f"multi30k {data_args.test_split}", pairs, queries, _visual_store(data_args), texts


def _nrccr(data_args, seed: int):
    """NRCCR caption files (`<visual_id>#<tag>#<k> <text>`): train_file holds the English training captions,
    mt_train_file their MT per language, validation_file/test_file the human captions per language."""
    _require(data_args, "nrccr", ("train_file", "mt_train_file", "validation_file", "test_file", "features_file"))
    langs = data_args.target_langs
    source = _data_path(data_args, data_args.train_file)
    train = concatenate_datasets([nrccr_pairs(source, _per_lang(data_args, "mt_train_file", lang), lang) for lang in langs])
    pairs = _split_validation_pairs(train, seed, source)
    queries = {
        name: concatenate_datasets([nrccr_queries(_per_lang(data_args, key, lang), lang) for lang in langs])
        for name, key in (("validation", "validation_file"), ("test", "test_file"))
    }
    texts = list(pairs["train"]["source_text"]) + list(pairs["train"]["target_text"])
    return f"nrccr {source.name}", pairs, queries, _visual_store(data_args), texts


def check_fits_data(data: RunData, cl2cm_args, training_args) -> None:
    """Refuse, before any training, a batch larger than the training pairs of a stage or a
    teacher-neighbour group larger than its items (settings that need the data read to be checked)."""
    batch, batch_text = global_batch(training_args)
    stages = {"cl": ["stage 1"], "cm": ["stage 2"], "both": ["stage 1", "stage 2"]}[cl2cm_args.stage]
    for stage in stages:
        pairs = data.train_pairs
        if stage == "stage 1" and cl2cm_args.cl_first_caption_only:
            pairs = first_caption_pairs(data).train_pairs
        if batch > len(pairs):
            raise CL2CMError(
                f"{batch_text} = {batch} rows per step is larger than the data: {stage} trains on {len(pairs)} pairs "
                f"of {data.name}"
            )
    group = cl2cm_args.kt_neighbour_group_size
    if group and "stage 2" in stages:
        items = len(set(data.train_pairs["visual_id"]))
        if group > items:
            raise CL2CMError(f"kt_neighbour_group_size={group} is larger than the data: {data.name} has {items} training items")


def build_run_data(data_args, model_args, training_args) -> RunData:
    sources = {"demo": _demo, "files": _files, "multi30k_r50": _multi30k_r50, "multi30k": _multi30k, "nrccr": _nrccr}
    if data_args.dataset not in sources:
        raise CL2CMError(f"dataset={data_args.dataset!r}; expected one of {sorted(sources)}")
    skipped = SkippedRows()  # rows left out under on_bad_row: skip, listed in <output_dir>/skipped_rows.jsonl
    extra = {"files": {"skipped": skipped}, "demo": {"training_args": training_args}}.get(data_args.dataset, {})
    name, pairs, queries, features, texts = sources[data_args.dataset](data_args, training_args.seed, **extra)
    _check_visual_input(features, model_args, data_args)
    report_skipped_rows(skipped, data_args.on_bad_row, training_args.output_dir, write=training_args.should_save)
    tokenizer = _tokenizer(data_args, model_args, texts)
    return RunData(
        name=name,
        train_pairs=pairs["train"],
        validation_pairs=pairs["validation"],
        validation_queries=queries["validation"],
        test_queries=queries["test"],
        features=features,
        tokenizer=tokenizer,
        gallery_captions=_english_captions(queries["test"]),
    )
