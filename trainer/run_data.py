"""The data of a run, whatever its source: translated training pairs, validation pairs and queries,
test queries, the visual feature store and the tokenizer."""

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer

from cl2cm_hf.data import (
    VisualFeatureStore,
    build_demo_world,
    load_pairs,
    load_queries,
    train_demo_tokenizer,
)


@dataclass
class RunData:
    name: str
    train_pairs: Dataset
    validation_pairs: Dataset
    validation_queries: Dataset
    test_queries: Dataset
    features: VisualFeatureStore
    tokenizer: object
    gallery_captions: dict[str, str]  # visual_id -> an English caption, to show search results


def _english_captions(queries: Dataset) -> dict[str, str]:
    english = queries.filter(lambda lang: lang == "en", input_columns="lang")
    return dict(zip(english["visual_id"], english["text"]))


def _tokenizer(data_args, model_args, texts: list[str]):
    """The configured tokenizer, the text tower's own, or one trained on the run's training text."""
    if data_args.tokenizer:
        return AutoTokenizer.from_pretrained(data_args.tokenizer)
    if model_args.text_model:
        return AutoTokenizer.from_pretrained(model_args.text_model)
    return train_demo_tokenizer(texts, vocab_size=data_args.tokenizer_vocab_size)


def _demo(data_args, seed: int):
    world = build_demo_world(
        seed=seed,
        num_items=data_args.demo_items,
        val_items=data_args.demo_validation_items,
        test_items=data_args.demo_test_items,
        mt_noise=data_args.demo_mt_noise,
        visual_kind=data_args.demo_visual_kind,
        feature_dim=data_args.demo_feature_dim,
        target_langs=tuple(data_args.target_langs),
    )
    return "demo world", world.pairs, world.queries, world.features, world.tokenizer_corpus()


def _files(data_args, seed: int):
    missing = [k for k in ("train_file", "validation_file", "test_file", "features_file") if not getattr(data_args, k)]
    if missing:
        raise ValueError(f"dataset: files needs {', '.join(missing)}")
    pairs = load_pairs(data_args.train_file).train_test_split(test_size=0.05, seed=seed)
    queries = {"validation": load_queries(data_args.validation_file), "test": load_queries(data_args.test_file)}
    pairs = {"train": pairs["train"], "validation": pairs["test"]}
    texts = list(pairs["train"]["source_text"]) + list(pairs["train"]["target_text"])
    return Path(data_args.train_file).stem, pairs, queries, VisualFeatureStore.load(data_args.features_file), texts


def build_run_data(data_args, model_args, training_args) -> RunData:
    sources = {"demo": _demo, "files": _files}
    if data_args.dataset not in sources:
        raise ValueError(f"dataset={data_args.dataset!r}; expected one of {sorted(sources)}")
    name, pairs, queries, features, texts = sources[data_args.dataset](data_args, training_args.seed)
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
