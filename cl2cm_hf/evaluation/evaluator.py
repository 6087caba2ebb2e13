"""Retrieval evaluators called by the trainers (validation), run.py (test) and the leaderboard.

Each returns `MetricRecord`s (dataset, split, language, direction, metric, value) in language
order, each language's metrics in `METRIC_KEYS` order. The trainers log them as flat scalars
(`records.flat_metrics`: ``<lang>_t2v_r1 ... <lang>_sumr`` and ``sumr``, the mean SumR over
languages that selects the best checkpoint).
"""

from collections.abc import Sequence

import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.records import MetricRecord, records_from_metrics
from cl2cm_hf.inference import as_processor, encode_texts, encode_visual
from cl2cm_hf.retrieval import metrics_from_ranks, ranks, retrieval_metrics


def _unique_in_order(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _columns_in_lang(rows, lang_column: str, lang: str, *columns: str) -> tuple[list, ...]:
    """The `columns` of the rows in language `lang`, in order: a plain scan, where `Dataset.filter`
    would print a progress bar and hash a lambda for a few hundred rows."""
    langs = rows[lang_column]
    return tuple([value for value, lang_ in zip(rows[column], langs) if lang_ == lang] for column in columns)


class _Evaluator:
    def __init__(self, tokenizer, langs: Sequence[str], max_length: int, text_prefix: str = "", batch_size: int = 256,
                 *, dataset: str, split: str):
        self.processor = as_processor(tokenizer, text_prefix)  # a tokenizer, or a checkpoint's processor
        self.dataset = dataset  # named in every record (the card's model-index, the leaderboard)
        self.split = split
        self.langs = list(langs)
        self.max_length = max_length
        self.batch_size = batch_size

    def _texts(self, encode, texts, device):
        return encode_texts(encode, self.processor, texts, self.batch_size, self.max_length, device=device)

    def _records(self, per_lang: dict[str, dict[str, float]]) -> list[MetricRecord]:
        return [record for lang, metrics in per_lang.items()
                for record in records_from_metrics(metrics, dataset=self.dataset, split=self.split, lang=lang)]


class CrossModalEvaluator(_Evaluator):
    """Target-language captions vs the visual items they describe (several captions per item allowed)."""

    def __init__(self, queries, feature_store, tokenizer, langs, max_length, text_prefix="", batch_size=256, *,
                 dataset: str, split: str):
        super().__init__(tokenizer, langs, max_length, text_prefix, batch_size, dataset=dataset, split=split)
        self.feature_store = feature_store
        self.by_lang = {}
        for lang in self.langs:
            self.by_lang[lang] = _columns_in_lang(queries, "lang", lang, "text", "visual_id")
            if not self.by_lang[lang][0]:
                raise CL2CMError(f"no evaluation queries in language {lang!r}")
        self.gallery_ids = _unique_in_order(vid for _, ids in self.by_lang.values() for vid in ids)

    @torch.no_grad()
    def embed(self, model):
        """Gallery embeddings and, per language, query embeddings with their gallery indices."""
        device = next(model.parameters()).device
        gallery = encode_visual(
            model, self.feature_store, self.gallery_ids, self.batch_size, device=device, processor=self.processor
        )
        position = {vid: i for i, vid in enumerate(self.gallery_ids)}
        queries = {
            lang: (self._texts(model.get_text_features, texts, device), torch.tensor([position[v] for v in ids]))
            for lang, (texts, ids) in self.by_lang.items()
        }
        return gallery, queries

    def ranks(self, model) -> dict:
        """Per language, the `RetrievalRanks` of both directions (for metrics, cards and plots)."""
        gallery, queries = self.embed(model)
        return {lang: ranks(q, gallery, text_to_visual) for lang, (q, text_to_visual) in queries.items()}

    def __call__(self, model) -> list[MetricRecord]:
        return self.metrics(self.ranks(model))

    def metrics(self, ranks_by_lang: dict) -> list[MetricRecord]:
        """The records of `ranks` (per language, both directions)."""
        return self._records({lang: metrics_from_ranks(r.t2v, r.v2t) for lang, r in ranks_by_lang.items()})


class CrossLingualEvaluator(_Evaluator):
    """Stage 1: target sentences retrieve their source sentences (t2v = target->source)."""

    def __init__(self, pairs, tokenizer, langs, max_length, text_prefix="", batch_size=256, *, dataset: str, split: str):
        super().__init__(tokenizer, langs, max_length, text_prefix, batch_size, dataset=dataset, split=split)
        self.by_lang = {}
        for lang in self.langs:
            self.by_lang[lang] = _columns_in_lang(pairs, "target_lang", lang, "source_text", "target_text")
            if not self.by_lang[lang][0]:
                raise CL2CMError(f"no validation pairs in language {lang!r}")

    @torch.no_grad()
    def __call__(self, model) -> list[MetricRecord]:
        device = next(model.parameters()).device
        per_lang = {}
        for lang, (sources, targets) in self.by_lang.items():
            unique_sources = _unique_in_order(sources)
            position = {s: i for i, s in enumerate(unique_sources)}
            source_emb = self._texts(lambda **kw: model.get_text_features(**kw, language="source"), unique_sources, device)
            target_emb = self._texts(lambda **kw: model.get_text_features(**kw, language="target"), targets, device)
            per_lang[lang] = retrieval_metrics(target_emb, source_emb, torch.tensor([position[s] for s in sources]))
        return self._records(per_lang)
