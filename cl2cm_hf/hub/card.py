"""The model card of a CL2CM checkpoint: ``hub_cards/model_card.md`` rendered with ``ModelCard``.

* `build_card(folder, records, ...)`: writes ``folder/README.md`` (YAML metadata with
  ``model-index``, the usage snippet and the text of the template, the training recipe, the results
  table) and ``folder/recall_at_k.png``.
* `update_card_results(folder, records)`: merges new results into an existing card, keeping the rest.

What the card says comes from the caller or the checkpoint, never from names: the run passes the
visual modality and the target languages; for a checkpoint alone, its ``training_config.yaml``
(``target_langs``) and ``config.json`` (a temporal transformer means video) say what they can, and
what nothing says is left out. Local absolute paths are never published.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import ModelCard, ModelCardData

from cl2cm_hf.atomic import atomic_write_text, final_path
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.records import TEST_RESULTS, MetricRecord, load_records
from cl2cm_hf.hub.local_paths import publishable_settings
from cl2cm_hf.hub.push import README, CheckpointError, read_json
from cl2cm_hf.hub.results import (
    MODALITIES,
    eval_results,
    metrics_table,
    modality_of,
    plot_recall_at_k,
    record_of,
    result_key,
)

TEMPLATE_PATH = Path(str(importlib.resources.files("cl2cm_hf.hub_cards") / "model_card.md"))  # edited in hub_cards/
PLOT_FILENAME = "recall_at_k.png"
TAGS = ["custom_code", "cross-lingual", "cross-modal-retrieval", "cl2cm"]
RESULTS_START = "<!-- cl2cm:results:start -->"
RESULTS_END = "<!-- cl2cm:results:end -->"
SOURCE_LANGUAGE = "en"  # CL2CM trains from English captions and their machine translations
STAGE_FOLDERS = ("cross_modal", "cross_lingual")  # a run's stage folders: the card is named after the run
_EXAMPLE_CAPTIONS = {
    "en": ["A dog runs across a meadow.", "Two children play on the beach."],
    "de": ["Ein Hund rennt über eine Wiese.", "Zwei Kinder spielen am Strand."],
    "fr": ["Un chien court dans un pré.", "Deux enfants jouent sur la plage."],
    "cs": ["Pes běží přes louku.", "Dvě děti si hrají na pláži."],
    "zh": ["一只狗跑过草地。", "两个孩子在海滩上玩耍。"],
    "ja": ["犬が草原を走っている。", "二人の子供が浜辺で遊んでいる。"],
    "es": ["Un perro corre por un prado.", "Dos niños juegan en la playa."],
    "it": ["Un cane corre su un prato.", "Due bambini giocano sulla spiaggia."],
}


def _template() -> jinja2.Template:
    return jinja2.Template(TEMPLATE_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# What the template is given
# --------------------------------------------------------------------------------------------


def visual_inputs(config: Mapping) -> dict:
    """What ``get_image_features`` / ``get_video_features`` of this checkpoint take, for the snippet, the note and the
    visual-tower line: kind ``features`` (a vector per image), ``frames`` (a sequence per video, a
    temporal transformer) or ``pixels`` (a vision backbone), with the sizes."""
    if config.get("visual_encoder_type", "features") == "features":
        layers = int(config.get("visual_num_layers", 0))
        return {
            "kind": "frames" if layers > 0 else "features",
            "feature_dim": int(config.get("visual_feature_dim", 2048)),
            "hidden_size": config.get("visual_hidden_size"),
            "num_layers": layers,
            "frames": min(8, int(config.get("visual_max_frames", 64))),
            "feature_extractor": config.get("feature_extractor"),
        }
    vision = config.get("vision_config") or {}
    return {"kind": "pixels", "model_type": vision.get("model_type", "vision"), "image_size": int(vision.get("image_size", 224)),
            "channels": int(vision.get("num_channels", 3))}


def video_sampling(folder: Path) -> str | None:
    """How the checkpoint's video processor (``video_processor`` in processor_config.json) samples
    and sizes frames, for the card; None for a checkpoint without one."""
    video = read_json(folder / "processor_config.json").get("video_processor")
    if not isinstance(video, Mapping):
        return None
    sides = (video.get("crop_size") if video.get("do_center_crop") else None) or video.get("size") or {}
    size = f"{sides['height']}x{sides['width']}" if {"height", "width"} <= set(sides) else ", ".join(f"{k} {v}" for k, v in sides.items())
    frames = video.get("num_frames")
    if not video.get("do_sample_frames", True):
        sampling = "every frame of each video"
    elif video.get("fps"):
        sampling = f"{video['fps']} frames per second, at most {frames}"
    else:
        sampling = f"{frames} frames spread uniformly over each video (all frames of a shorter one, masked)"
    return f"{sampling}; {size} px each" if size else sampling


def _caption_literals(languages: Iterable[str]) -> list[str]:
    """Two example captions of the first target language that has some, as Python string literals
    (the checkpoint's processor adds its text prefix)."""
    target = [lang for lang in languages if lang != SOURCE_LANGUAGE and lang in _EXAMPLE_CAPTIONS]
    return [json.dumps(caption, ensure_ascii=False) for caption in _EXAMPLE_CAPTIONS[target[0] if target else "en"]]


def usage_snippet(config: Mapping, repo_id: str, languages: Iterable[str]) -> tuple[str, str]:
    """The card's usage code (loads `repo_id`, scores captions against visual inputs of the shape
    this checkpoint expects) and its note on the real visual input, rendered from the template's
    ``usage_code`` and ``visual_input_note`` macros."""
    visual = visual_inputs(config)
    module = _template().make_module({"visual": visual, "text": {}})  # the body renders unused; the macros are kept
    return str(module.usage_code(repo_id, _caption_literals(languages), visual)), str(module.visual_input_note(visual))


def _flatten(config: Mapping, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def training_summary(training_config: Mapping | None) -> list[str]:
    """A few lines on the recipe: stages, loss weights (lambdas), temperatures, data, schedule."""
    if not training_config:
        return []
    flat = _flatten(training_config)
    lines = []
    stage = flat.get("stage")
    stages = {"both": "both stages (1: cross-lingual, 2: cross-modal)", "cl": "stage 1 only (cross-lingual)",
              "cm": "stage 2 only (cross-modal)"}
    if stage is not None:
        lines.append(f"Stages: {stages.get(str(stage), stage)}")
    lambdas = {k: v for k, v in flat.items() if "lambda" in k.split(".")[-1]}
    if lambdas:
        lines.append("Loss weights: " + ", ".join(f"`{k}` = {v}" for k, v in lambdas.items()))
    temps = {k: v for k, v in flat.items()
             if any(t in k.split(".")[-1] for t in ("temperature", "tau", "logit_scale_init", "ot_epsilon"))}
    if temps:
        shown = []
        for k, v in temps.items():
            extra = ""
            if k.split(".")[-1].startswith("logit_scale_init") and isinstance(v, (int, float)):
                extra = f" (temperature {math.exp(-float(v)):.3g})"
            shown.append(f"`{k}` = {v}{extra}")
        lines.append("Temperatures: " + ", ".join(shown))
    for key, label in (("loss", "Contrastive loss"), ("dataset", "Data"), ("text_model", "Text backbone"),
                       ("vision_model", "Vision backbone")):
        if flat.get(key) not in (None, ""):
            lines.append(f"{label}: `{flat[key]}`")
    schedule = [f"`{k}` = {flat[k]}" for k in ("num_train_epochs", "per_device_train_batch_size", "learning_rate", "cl_num_train_epochs")
                if k in flat]
    if schedule:
        lines.append("Schedule: " + ", ".join(schedule))
    return lines


def _base_models(config: Mapping, training_config: Mapping) -> list[str]:
    candidates = [
        (config.get("text_config") or {}).get("_name_or_path"),
        (config.get("vision_config") or {}).get("_name_or_path"),
        training_config.get("text_model"),
        training_config.get("vision_model"),
        training_config.get("base_model"),
    ]
    hub_id = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
    found = []
    for name in candidates:
        if isinstance(name, str) and hub_id.match(name) and not os.path.exists(name) and name not in found:
            found.append(name)
    return found


def _model_name_of(folder: Path) -> str:
    """The folder's final name (also while `cl2cm_hf.atomic` writes it under a temporary one); a
    run's stage folder (``<run>/cross_modal``) is named after the run."""
    folder = final_path(folder.resolve())
    if folder.name in STAGE_FOLDERS and folder.parent.name:
        return folder.parent.name
    return folder.name


def _modality_of_config(config: Mapping) -> str | None:
    """The modality a checkpoint's config states: a temporal transformer reads frame sequences (video)."""
    return "video" if int(config.get("visual_num_layers", 0)) > 0 else None


def _results_section(records: list[MetricRecord], has_plot: bool) -> str:
    parts = [RESULTS_START, metrics_table(records)]
    if has_plot:
        parts.append(f"\n![Recall@K per language and direction]({PLOT_FILENAME})")
    parts.append(RESULTS_END)
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Build and update
# --------------------------------------------------------------------------------------------


def build_card(folder: str | Path, records: Iterable[MetricRecord] | None = None, training_config: Mapping | None = None,
               ranks: Mapping | None = None, repo_id: str | None = None, *, model_name: str | None = None,
               license: str = "apache-2.0", target_languages: Iterable[str] | None = None,
               visual_modality: str | None = None) -> ModelCard:
    """Render the model card of the checkpoint in `folder` and write ``README.md`` and
    ``recall_at_k.png`` there (each atomically: a temporary file, then ``os.replace``).

    Args:
        folder: a saved `CL2CMCrossModalModel` (``config.json``; tokenizer files alongside).
        records: the `MetricRecord`s to show, or None to read the run's ``test_results.json``
            from the folder (the old flat format is migrated, with a warning).
        training_config: the run's recipe; None reads ``folder/training_config.yaml`` if present.
        ranks: per-query ranks for the plot (``{lang: RetrievalRanks}`` or
            ``{lang: {"t2v": ranks, "v2t": ranks}}``); without them the plot uses the R@K records.
        repo_id: the Hub id used in the usage snippet (default: ``<your-org>/<model name>``).
        model_name: the ``model-index`` name (default: the repo name, else the folder's name, or
            the run's name for a ``<run>/cross_modal`` folder).
        target_languages: the languages the model was trained for besides English (default: the
            recipe's ``target_langs``; none: the card names no language).
        visual_modality: ``image`` or ``video`` (default: video when the config has a temporal
            transformer; else the card says "visual" and its task types ``text-to-visual-retrieval``).
    """
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if not config:
        raise CheckpointError(f"{folder} has no config.json: save the model there first (save_pretrained)")
    if training_config is None:
        recipe = folder / "training_config.yaml"
        training_config = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else {}
    training_config = publishable_settings(dict(training_config or {}))[0]
    if records is None:
        stored = folder / TEST_RESULTS
        records = load_records(stored, dataset=str(training_config.get("dataset") or "unknown")) if stored.is_file() else []
    records = [dataclasses.replace(record, model=None) for record in records]  # a card is one model
    if visual_modality is None:
        visual_modality = _modality_of_config(config)
    if visual_modality not in (None, *MODALITIES):
        raise CL2CMError(f"visual_modality must be one of {MODALITIES} or None, got {visual_modality!r}")
    targets = [str(lang) for lang in (target_languages if target_languages is not None else training_config.get("target_langs") or [])]
    targets = [lang for lang in targets if lang != SOURCE_LANGUAGE]
    languages = [SOURCE_LANGUAGE, *targets] if targets else []
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else _model_name_of(folder))
    repo_id = repo_id or f"<your-org>/{model_name}"
    datasets = list(dict.fromkeys([r.dataset for r in records] + ([str(training_config["dataset"])] if training_config.get("dataset") else [])))
    results = eval_results(records, visual_modality)
    card_data = ModelCardData(
        language=languages or None,
        license=license,
        library_name="transformers",
        tags=list(TAGS),
        pipeline_tag="feature-extraction",
        datasets=sorted(datasets) or None,
        base_model=_base_models(config, training_config) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    has_plot = plot_recall_at_k(folder / PLOT_FILENAME, records, ranks)
    text = config.get("text_config") or {}
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        modality=visual_modality,
        source_language=SOURCE_LANGUAGE,
        target_languages=targets,
        languages=languages,
        text={"model_type": text.get("model_type", "text"), "pooling": config.get("pooling", "mean"),
              "projection_dim": config.get("projection_dim", "?"), "prefix": config.get("text_prefix") or ""},
        visual=visual_inputs(config),
        video=video_sampling(folder),
        captions=_caption_literals(languages),
        training_summary=training_summary(training_config),
        training_yaml=yaml.safe_dump(training_config, sort_keys=False, allow_unicode=True).strip() if training_config else "",
        results_section=_results_section(records, has_plot),
    )
    atomic_write_text(folder / README, str(card))
    return card


def update_card_results(folder: str | Path, records: Iterable[MetricRecord], ranks: Mapping | None = None,
                        visual_modality: str | None = None) -> ModelCard:
    """Merge `records` into the card in `folder` (a result with the same task, dataset, language,
    split and metric is replaced; the others are kept), re-render its results table and plot, and
    keep everything else of the card (metadata, text) as it was. The modality defaults to the one
    the card's results already name. A folder without a card gets a new one (`build_card`)."""
    folder = Path(folder)
    path = folder / README
    records = list(records)
    if not path.is_file():
        return build_card(folder, records, ranks=ranks, visual_modality=visual_modality)
    card = ModelCard.load(path)
    existing = list(card.data.eval_results or [])
    if visual_modality is None:
        visual_modality = modality_of(existing) or _modality_of_config(read_json(folder / "config.json"))
    merged = {result_key(r): r for r in existing}
    for result in eval_results(records, visual_modality):
        merged[result_key(result)] = result
    card.data.eval_results = list(merged.values()) or None
    if not card.data.model_name:
        card.data.model_name = _model_name_of(folder)
    shown = [record for record in map(record_of, card.data.eval_results or []) if record is not None]
    has_plot = plot_recall_at_k(folder / PLOT_FILENAME, shown, ranks)
    section = _results_section(shown, has_plot)
    text = card.text
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + section + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Evaluation\n\n" + section + "\n"
    card.text = text
    atomic_write_text(path, str(card))
    return card


__all__ = ["PLOT_FILENAME", "TEMPLATE_PATH", "build_card", "training_summary", "update_card_results", "usage_snippet",
           "visual_inputs"]
