"""Model cards and pushes of CL2CM checkpoints to the Hugging Face Hub.

* `build_card(folder, ...)`: renders ``hub_cards/model_card.md`` with ``huggingface_hub.ModelCard``
  into ``folder/README.md`` (YAML metadata with ``model-index``, a usage snippet rendered from the
  checkpoint's config, the training recipe, a results table) and draws ``folder/recall_at_k.png``.
* `eval_results_from_rows(rows)`: leaderboard rows -> ``EvalResult``s (the card's ``model-index``).
* `update_card_results(folder, rows)`: merges new results into an existing card, keeping the rest.
* `push_checkpoint(folder, repo_id, api=None, ...)`: stages the publishable files in a temporary
  folder, checks that the checkpoint is complete and uploads it with ``HfApi.upload_folder``
  (never ``PreTrainedModel.push_to_hub``, which replaces README.md).

Leaderboard rows are dicts ``{"model", "dataset", "lang", "direction", "metric", "value"}`` with
``direction`` in ``t2v``/``v2t`` (``both`` or None for ``sumr``) and ``metric`` one of ``r1``,
``r5``, ``r10`` (any ``r<K>``), ``medr``, ``mnr``, ``sumr`` (``R@1``, ``recall@1``, ``t2v_r1``, ...
are accepted too); optional ``split`` and ``dataset_name``.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData


from .atomic import atomic_write_bytes, atomic_write_text

TEMPLATE_PATH = Path(str(importlib.resources.files("cl2cm_hf.hub_cards") / "model_card.md"))  # edited in hub_cards/
README = "README.md"
PLOT_FILENAME = "recall_at_k.png"
TAGS = ["custom_code", "cross-lingual", "cross-modal-retrieval", "cl2cm"]
RESULTS_START = "<!-- cl2cm:results:start -->"
RESULTS_END = "<!-- cl2cm:results:end -->"
DIRECTIONS = ("t2v", "v2t")
VIDEO_DATASET_HINTS = ("vatex", "msrvtt", "msr-vtt", "msr_vtt", "msvd", "video", "didemo", "activitynet", "youcook")

# Files a checkpoint folder may publish (top level only; subfolders such as trainer checkpoints or
# the test gallery stay local), and training leftovers that are never published.
PUBLISHED_SUFFIXES = (".json", ".safetensors", ".py", ".md", ".png", ".txt", ".model", ".yaml", ".yml", ".jinja", ".tiktoken")
PUBLISHED_NAMES = ("LICENSE", "NOTICE")
NEVER_PUBLISHED = ("trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt",
                   "gallery_captions.json")  # the last: test-set captions of the query demo (dataset licence)

_METRIC_ALIASES = {"medr": "medr", "median_rank": "medr", "mnr": "mnr", "meanr": "mnr", "mean_rank": "mnr",
                   "sumr": "sumr", "rsum": "sumr", "sum_of_recalls": "sumr"}
_METRIC_TYPES = {"medr": "median_rank", "mnr": "mean_rank", "sumr": "sum_of_recalls"}
_METRIC_LABELS = {"medr": "MedR", "mnr": "MnR", "sumr": "SumR"}
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
_LANG_KEYS = ("source_lang", "target_lang", "target_langs", "languages", "langs", "lang", "language")


class CheckpointError(ValueError):
    """A checkpoint folder is missing what a Hub repository needs to load (weights, code, card)."""


# --------------------------------------------------------------------------------------------
# Results: rows, EvalResults, the table
# --------------------------------------------------------------------------------------------


def _metric_key(metric: str, direction: str | None) -> tuple[str, str | None]:
    """('r1' | 'medr' | 'mnr' | 'sumr', direction) from the many spellings of a metric."""
    name = str(metric).strip().lower().replace(" ", "")
    if direction is not None and str(direction).lower() in ("both", "", "none"):
        direction = None
    for prefix in DIRECTIONS:
        if name.startswith(prefix + "_"):
            if direction is not None and str(direction).lower() != prefix:
                raise ValueError(f"metric {metric!r} contradicts direction {direction!r}")
            name, direction = name[len(prefix) + 1 :], prefix
    match = re.fullmatch(r"(?:r|r@|recall@|recall_at_|recall)(\d+)", name)
    if match:
        key = f"r{int(match.group(1))}"
    elif name in _METRIC_ALIASES:
        key = _METRIC_ALIASES[name]
    else:
        raise ValueError(f"unknown retrieval metric {metric!r}: expected r<K>, medr, mnr or sumr")
    if direction is not None:
        direction = str(direction).lower()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 't2v', 'v2t' or 'both', got {direction!r}")
    if key == "sumr":
        direction = None
    elif direction is None:
        raise ValueError(f"metric {metric!r} needs a direction ('t2v' or 'v2t')")
    return key, direction


def _modality(dataset: str, visual_modality: str | None) -> str:
    if visual_modality is not None:
        if visual_modality not in ("image", "video"):
            raise ValueError(f"visual_modality must be 'image' or 'video', got {visual_modality!r}")
        return visual_modality
    return "video" if any(hint in str(dataset).lower() for hint in VIDEO_DATASET_HINTS) else "image"


def _task(direction: str | None, modality: str) -> tuple[str, str]:
    title = modality.capitalize()
    if direction == "t2v":
        return f"text-to-{modality}-retrieval", f"Text-to-{title} Retrieval"
    if direction == "v2t":
        return f"{modality}-to-text-retrieval", f"{title}-to-Text Retrieval"
    return f"{modality}-text-retrieval", f"{title}-Text Retrieval"


def _direction_of(task_type: str) -> str | None:
    if task_type.startswith("text-to-"):
        return "t2v"
    if "-to-text" in task_type:
        return "v2t"
    return None


def _metric_type(key: str) -> str:
    return f"recall@{key[1:]}" if key.startswith("r") and key[1:].isdigit() else _METRIC_TYPES[key]


def _key_of_metric_type(metric_type: str) -> str | None:
    if metric_type.startswith("recall@"):
        return "r" + metric_type.split("@", 1)[1]
    return {v: k for k, v in _METRIC_TYPES.items()}.get(metric_type)


def eval_results_from_rows(rows: Iterable[Mapping], visual_modality: str | None = None) -> list[EvalResult]:
    """Leaderboard rows -> ``EvalResult``s, one per (dataset, split, language, direction, metric).

    The task type names the direction (``text-to-image-retrieval``, ``image-to-text-retrieval``,
    ``image-text-retrieval`` for SumR; ``video`` for video datasets, guessed from the dataset name
    unless `visual_modality` says), the dataset config is the query language, and the metric type
    is ``recall@K``, ``median_rank``, ``mean_rank`` or ``sum_of_recalls``. A later row replaces an
    earlier one with the same key. The rows' ``model`` field is not stored (a card is one model).
    """
    results: dict[tuple, EvalResult] = {}
    for row in rows:
        missing = [k for k in ("dataset", "lang", "metric", "value") if row.get(k) is None]
        if missing:
            raise ValueError(f"leaderboard row {dict(row)} lacks {missing}")
        key, direction = _metric_key(row["metric"], row.get("direction"))
        value = float(row["value"])
        if not math.isfinite(value):
            raise ValueError(f"leaderboard row {dict(row)} has a non-finite value")
        dataset, lang = str(row["dataset"]), str(row["lang"])
        task_type, task_name = _task(direction, _modality(dataset, visual_modality))
        label = _METRIC_LABELS.get(key, f"R@{key[1:]}")
        result = EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset,
            dataset_name=str(row.get("dataset_name") or dataset),
            dataset_config=lang,
            dataset_split=row.get("split"),
            metric_type=_metric_type(key),
            metric_value=value,
            metric_name=f"{direction.upper()} {label} ({lang})" if direction else f"{label} ({lang})",
        )
        results[_result_key(result)] = result
    return list(results.values())


def _result_key(result: EvalResult) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type)


def rows_from_metrics(metrics: Mapping[str, float], dataset: str, lang: str | None = None,
                      model: str | None = None, split: str | None = "test") -> list[dict]:
    """Leaderboard rows from a `retrieval_metrics` dict (``t2v_r1`` ...), or from a dict keyed
    ``<lang>_t2v_r1`` (the trainer's ``test_results.json``) when `lang` is None."""
    pattern = re.compile(r"^(?:(?P<lang>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)_)?(?P<direction>t2v|v2t)_(?P<metric>r\d+|medr|mnr)$")
    sumr = re.compile(r"^(?:(?P<lang>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)_)?sumr$")
    rows = []
    for name, value in metrics.items():
        match = pattern.match(name) or sumr.match(name)
        if match is None or value is None:
            continue
        row_lang = match.group("lang") or lang
        if row_lang is None or (lang is not None and match.group("lang") not in (None, lang)):
            continue
        direction = match.groupdict().get("direction")
        metric = match.groupdict().get("metric") or "sumr"
        rows.append({"model": model, "dataset": dataset, "lang": row_lang, "direction": direction,
                     "metric": metric, "value": float(value), "split": split})
    return rows


def results_table(eval_results: Iterable[EvalResult]) -> str:
    """Markdown table: one line per (dataset, split, language), T2V and V2T R@1/5/10, MedR, MnR, SumR."""
    table: dict[tuple, dict[str, float]] = {}
    for result in eval_results:
        key = _key_of_metric_type(result.metric_type)
        if key is None:
            continue
        direction = _direction_of(result.task_type)
        line = table.setdefault((result.dataset_name, result.dataset_split or "", result.dataset_config or ""), {})
        line[f"{direction}_{key}" if direction else key] = float(result.metric_value)
    if not table:
        return "_No evaluation results recorded yet._"
    columns = [(f"{d}_{k}", f"{d.upper()} {label}") for d in DIRECTIONS
               for k, label in (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("medr", "MedR"), ("mnr", "MnR"))]
    columns.append(("sumr", "SumR"))
    lines = ["| Dataset | Split | Lang | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    for (dataset, split, lang), values in sorted(table.items()):
        cells = [_format(key, values.get(key)) for key, _ in columns]
        lines.append(f"| {dataset} | {split or '-'} | {lang or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.endswith("medr"):
        return f"{value:g}"
    return f"{value:.1f}"


# --------------------------------------------------------------------------------------------
# Recall@K plot
# --------------------------------------------------------------------------------------------


def _rank_curves(ranks) -> list[tuple[str, object]]:
    """(label, ranks) pairs from ``{lang: RetrievalRanks | {"t2v": r, "v2t": r}}``,
    ``{(lang, direction): r}`` or ``{"de/t2v": r}``."""
    curves = []
    for key, value in ranks.items():
        if isinstance(key, tuple):
            curves.append((f"{key[0]} {key[1]}", value))
        elif hasattr(value, "t2v") and hasattr(value, "v2t"):
            curves += [(f"{key} t2v", value.t2v), (f"{key} v2t", value.v2t)]
        elif isinstance(value, Mapping):
            curves += [(f"{key} {direction}", value[direction]) for direction in DIRECTIONS if direction in value]
        else:
            curves.append((str(key).replace("/", " "), value))
    return curves


def plot_recall_at_k(path: str | Path, eval_results: Iterable[EvalResult] = (), ranks=None, max_k: int = 10) -> bool:
    """Draw recall@K curves to `path` (PNG, written atomically): from per-query `ranks` (K=1..max_k)
    when given, else from the card's R@K results. Returns False (nothing written) with no data."""
    from cl2cm_hf.retrieval import recall_at_k

    series: list[tuple[str, list[int], list[float]]] = []
    if ranks:
        ks = list(range(1, max_k + 1))
        series = [(label, ks, [recall_at_k(r, k) for k in ks]) for label, r in _rank_curves(ranks)]
    else:
        points: dict[str, dict[int, float]] = {}
        for result in eval_results:
            key = _key_of_metric_type(result.metric_type)
            direction = _direction_of(result.task_type)
            if key is None or not key[1:].isdigit() or direction is None:
                continue
            label = f"{result.dataset_name} {result.dataset_config} {direction}"
            points.setdefault(label, {})[int(key[1:])] = float(result.metric_value)
        series = [(label, sorted(p), [p[k] for k in sorted(p)]) for label, p in sorted(points.items())]
    if not series:
        return False

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no pyplot, no GUI backend, thread-safe
    ax = fig.add_subplot()
    for label, ks, values in series:
        style = "-" if label.endswith("t2v") else "--"
        ax.plot(ks, values, style, marker="o", markersize=3, label=label)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted({k for _, ks, _ in series for k in ks}))
    ax.grid(True, alpha=0.3)
    ax.set_title("Recall@K per language and direction (t2v solid, v2t dashed)", fontsize=9)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return True


def _results_section(eval_results: list[EvalResult], has_plot: bool) -> str:
    parts = [RESULTS_START, results_table(eval_results)]
    if has_plot:
        parts.append(f"\n![Recall@K per language and direction]({PLOT_FILENAME})")
    parts.append(RESULTS_END)
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------


def _languages(training_config: Mapping, rows: list[Mapping]) -> list[str]:
    found: list[str] = []

    def add(value):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item and item not in found:
                found.append(item)

    for key in _LANG_KEYS:
        if key in training_config and training_config[key]:
            add(training_config[key])
    for row in rows:
        add(str(row["lang"]))
    return found


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


def usage_snippet(config: Mapping, repo_id: str, languages: list[str]) -> tuple[str, str]:
    """Python code that loads the model by `repo_id` and scores captions against visual inputs of
    the shape this checkpoint expects, and a note on the real visual input."""
    prefix = config.get("text_prefix") or ""
    target = [lang for lang in languages if lang != "en" and lang in _EXAMPLE_CAPTIONS]
    captions = _EXAMPLE_CAPTIONS[target[0] if target else "en"]
    caption_list = ", ".join(json.dumps(prefix + c, ensure_ascii=False) for c in captions)
    lines = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'repo_id = "{repo_id}"',
        "model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)  # the config class is custom code",
        "",
        f"captions = [{caption_list}]",
    ]
    if config.get("visual_encoder_type", "features") == "features":
        dim = int(config.get("visual_feature_dim", 2048))
        if int(config.get("visual_num_layers", 0)) > 0:
            frames = min(8, int(config.get("visual_max_frames", 64)))
            lines += [
                f"# Three videos as {frames} frames of precomputed {dim}-d features each (replace with real ones),",
                "# and which frames are real (1) or padding (0).",
                f"visual_features = torch.randn(3, {frames}, {dim})",
                f"visual_mask = torch.ones(3, {frames}, dtype=torch.long)",
                "visual_inputs = {\"visual_features\": visual_features, \"visual_mask\": visual_mask}",
            ]
        else:
            lines += [
                f"# Three images as precomputed {dim}-d features (replace with real ones; videos: (n, frames, {dim}) + visual_mask).",
                f"visual_inputs = {{\"visual_features\": torch.randn(3, {dim})}}",
            ]
        note = (f"`visual_features` must come from the same feature extractor as in training ({dim}-d vectors"
                + (f", `{config['feature_extractor']}`" if config.get("feature_extractor") else "") + ").")
    else:
        vision = config.get("vision_config") or {}
        size = int(vision.get("image_size", 224))
        channels = int(vision.get("num_channels", 3))
        lines += [
            f"# Three images as normalised pixels (use the {vision.get('model_type', 'vision')} image processor on real images).",
            f"visual_inputs = {{\"pixel_values\": torch.randn(3, {channels}, {size}, {size})}}",
        ]
        note = (f"`pixel_values` are {channels}x{size}x{size} images preprocessed as for the "
                f"`{vision.get('model_type', 'vision')}` backbone; videos are `(n, frames, {channels}, {size}, {size})` with `visual_mask`.")
    lines += [
        "",
        "with torch.no_grad():",
        "    text_emb = model.get_text_features(**tokenizer(captions, padding=True, truncation=True, return_tensors=\"pt\"))",
        "    visual_emb = model.get_visual_features(**visual_inputs)",
        "scores = text_emb @ visual_emb.T  # cosine similarities: (captions, visual items)",
        "print(scores.shape, scores.argmax(dim=1))",
    ]
    return "\n".join(lines), note


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _normalise_results(results, dataset: str, default_lang: str, folder: Path) -> list[dict]:
    """Leaderboard rows from the `results` argument of `build_card`."""
    if results is None:
        stored = _read_json(folder / "test_results.json")  # the trainer's {"<lang>_t2v_r1": ...}
        return rows_from_metrics(stored, dataset) if stored else []
    if isinstance(results, Mapping):
        if results and all(isinstance(v, Mapping) for v in results.values()):  # {lang: metrics}
            return [row for lang, metrics in results.items() for row in rows_from_metrics(metrics, dataset, str(lang))]
        return rows_from_metrics(results, dataset, default_lang)  # one metrics dict
    return [dict(row) for row in results]


def _model_name_of(folder: Path) -> str:
    """A model name from a checkpoint folder: its name, without the temporary wrapping of
    `cl2cm_hf.atomic.atomic_directory` (``.<name>.<random>.tmp``); a run's stage folder
    (``<run>/cross_modal``) is named after the run."""
    folder = folder.resolve()
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", folder.name)
    name = match.group(1) if match else folder.name
    if name in ("cross_modal", "cross_lingual") and folder.parent.name:
        return folder.parent.name
    return name


def build_card(folder: str | Path, results=None, training_config: Mapping | None = None, ranks=None,
               repo_id: str | None = None, *, model_name: str | None = None, license: str = "apache-2.0",
               languages: list[str] | None = None, visual_modality: str | None = None) -> ModelCard:
    """Render the model card of the checkpoint in `folder` and write ``README.md`` and
    ``recall_at_k.png`` there (each atomically: a temporary file, then ``os.replace``).

    Args:
        folder: a saved `CL2CMCrossModalModel` (``config.json``; tokenizer files alongside).
        results: leaderboard rows, a `retrieval_metrics` dict, ``{lang: metrics}``, or None to read
            the trainer's ``test_results.json`` from the folder.
        training_config: the run's recipe; None reads ``folder/training_config.yaml`` if present.
        ranks: per-query ranks for the plot (``{lang: RetrievalRanks}`` or
            ``{lang: {"t2v": ranks, "v2t": ranks}}``); without them the plot uses the R@K results.
        repo_id: the Hub id used in the usage snippet (default: ``<your-org>/<model name>``).
        model_name: the ``model-index`` name (default: the repo name, else the folder's name, or
            the run's name for a ``<run>/cross_modal`` folder).
        license, languages, visual_modality: metadata overrides.
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if not config:
        raise CheckpointError(f"{folder} has no config.json: save the model there first (save_pretrained)")
    if training_config is None:
        recipe = folder / "training_config.yaml"
        training_config = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else {}
    training_config = dict(training_config or {})
    source = str(training_config.get("source_lang") or "en")
    recipe_langs = _languages(training_config, [])
    default_lang = next((lang for lang in (languages or recipe_langs) if lang != source), "und")
    rows = _normalise_results(results, str(training_config.get("dataset") or "unknown"), default_lang, folder)
    eval_results = eval_results_from_rows(rows, visual_modality)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else _model_name_of(folder))
    repo_id = repo_id or f"<your-org>/{model_name}"
    if not languages:
        languages = _languages(training_config, rows)
        if languages and source not in languages:
            languages.insert(0, source)  # stage 2 also trains on source-language captions
    languages = list(languages)
    datasets = sorted({str(row["dataset"]) for row in rows} | ({str(training_config["dataset"])} if training_config.get("dataset") else set()))
    modality = _modality(" ".join(datasets), visual_modality)
    if visual_modality is None and int(config.get("visual_num_layers", 0)) > 0 and modality == "image":
        modality = "video"

    card_data = ModelCardData(
        language=languages or None,
        license=license,
        library_name="transformers",
        tags=list(TAGS),
        pipeline_tag="feature-extraction",
        datasets=datasets or None,
        base_model=_base_models(config, training_config) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    has_plot = plot_recall_at_k(folder / PLOT_FILENAME, eval_results, ranks)
    card = _render(card_data, config, training_config, eval_results, has_plot, repo_id, model_name, languages, modality, source)
    atomic_write_text(folder / README, str(card))
    return card


def _render(card_data, config, training_config, eval_results, has_plot, repo_id, model_name, languages, modality, source) -> ModelCard:
    code, note = usage_snippet(config, repo_id, languages)
    vision = config.get("vision_config") or {}
    if config.get("visual_encoder_type", "features") == "features":
        frames = (f"{config.get('visual_num_layers')} temporal transformer layer(s) over frames"
                  if int(config.get("visual_num_layers", 0)) else "masked mean over frames")
        visual_tower = (f"precomputed {config.get('visual_feature_dim')}-d features -> linear "
                        f"{config.get('visual_hidden_size')} -> {frames} -> projection")
    else:
        visual_tower = f"`{vision.get('model_type', 'vision')}` backbone on pixels, frame pooling, projection"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        visual_noun=modality,
        visual_article="an" if modality[0] in "aeiou" else "a",
        visual_noun_plural=modality + "s",
        target_languages=[lang for lang in languages if lang != source],
        source_language=source,
        languages=languages,
        projection_dim=config.get("projection_dim", "?"),
        text_model_type=(config.get("text_config") or {}).get("model_type", "text"),
        pooling=config.get("pooling", "mean"),
        text_prefix=config.get("text_prefix") or "",
        visual_tower=visual_tower,
        visual_encoder_type=config.get("visual_encoder_type", "features"),
        visual_feature_dim=config.get("visual_feature_dim"),
        feature_extractor=config.get("feature_extractor") or training_config.get("feature_extractor"),
        vision_model_type=vision.get("model_type", "vision"),
        image_size=vision.get("image_size", 224),
        usage_code=code,
        visual_input_note=note,
        training_summary=training_summary(training_config),
        training_yaml=yaml.safe_dump(training_config, sort_keys=False, allow_unicode=True).strip() if training_config else "",
        results_section=_results_section(eval_results, has_plot),
    )


def update_card_results(folder: str | Path, rows: Iterable[Mapping], ranks=None,
                        visual_modality: str | None = None) -> ModelCard:
    """Merge leaderboard `rows` into the card in `folder` (a result with the same task, dataset,
    language, split and metric is replaced; the others are kept), re-render its results table and
    plot, and keep everything else of the card (metadata, text) as it was. A folder without a
    card gets a new one (`build_card` with these rows)."""
    folder = Path(folder)
    path = folder / README
    rows = [dict(row) for row in rows]
    if not path.is_file():
        return build_card(folder, results=rows, ranks=ranks, visual_modality=visual_modality)
    card = ModelCard.load(path)
    merged = {_result_key(r): r for r in (card.data.eval_results or [])}
    for result in eval_results_from_rows(rows, visual_modality):
        merged[_result_key(result)] = result
    card.data.eval_results = list(merged.values()) or None
    if not card.data.model_name:
        card.data.model_name = _model_name_of(folder)
    has_plot = plot_recall_at_k(folder / PLOT_FILENAME, card.data.eval_results or [], ranks)
    section = _results_section(card.data.eval_results or [], has_plot)
    text = card.text
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + section + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Evaluation\n\n" + section + "\n"
    card.text = text
    atomic_write_text(path, str(card))
    return card


# --------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------


def _is_published(path: Path) -> bool:
    name = path.name
    if not path.is_file() or name.startswith(".") or name in NEVER_PUBLISHED:
        return False
    return name in PUBLISHED_NAMES or name.endswith(PUBLISHED_SUFFIXES)


def _code_files(config: Mapping) -> set[str]:
    """Local module files named in an ``auto_map`` (``module.Class``; ``repo--module.Class``
    points to another repository and needs nothing here)."""
    files = set()
    for value in (config.get("auto_map") or {}).values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                files.add(ref.rsplit(".", 1)[0] + ".py")
    return files


def check_checkpoint(folder: str | Path) -> None:
    """Raise `CheckpointError` unless `folder` holds what ``AutoModel.from_pretrained(repo,
    trust_remote_code=True)`` and the Hub page need: config.json, safetensors weights, the code
    files of ``auto_map`` and those they import (``from .x import y``), and README.md."""
    folder = Path(folder)
    problems = []
    config_path = folder / "config.json"
    config = {}
    if not config_path.is_file():
        problems.append("config.json (save_pretrained the model)")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"a readable config.json ({exc})")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        problems += [f"{shard} (listed in model.safetensors.index.json)" for shard in sorted(shards) if not (folder / shard).is_file()]
    elif not (folder / "model.safetensors").is_file():
        problems.append("model.safetensors (the weights; .bin files are not published)")
    code = _code_files(config) | _code_files(_read_json(folder / "tokenizer_config.json"))
    seen = set()
    while code - seen:
        name = sorted(code - seen)[0]
        seen.add(name)
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} (named in auto_map or imported by the model code)")
            continue
        for module in re.findall(r"^\s*from\s+\.([\w.]+)\s+import", path.read_text(encoding="utf-8"), flags=re.M):
            code.add(module.replace(".", "/") + ".py")
    if not (folder / README).is_file():
        problems.append("README.md (build_card writes it)")
    if problems:
        raise CheckpointError(f"{folder} cannot be pushed, it lacks: " + "; ".join(problems))


def stage_checkpoint(folder: str | Path, staging: str | Path) -> list[str]:
    """Copy the publishable files of `folder` (model, code, tokenizer, card, plot, recipe, results;
    no subfolders, no trainer state) into `staging` and check the result; returns the file names."""
    folder, staging = Path(folder), Path(staging)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    staging.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(folder.iterdir()):
        if _is_published(path):
            shutil.copy2(path, staging / path.name)
            names.append(path.name)
    check_checkpoint(staging)
    return names


def push_checkpoint(folder: str | Path, repo_id: str, api=None, private: bool = False, revision: str | None = None,
                    commit_message: str = "Upload CL2CM checkpoint"):
    """Upload the checkpoint in `folder` to the Hub model repository `repo_id`.

    The publishable files are staged in a temporary folder (see `stage_checkpoint`; a missing
    config, weight file, code file or README.md raises `CheckpointError` before anything is sent),
    then ``api.create_repo(repo_id, private=private, exist_ok=True)`` (and ``create_branch`` for a
    `revision` other than main) and one ``api.upload_folder`` commit. `api` defaults to
    ``huggingface_hub.HfApi()`` (token from ``HF_TOKEN`` or the login). Returns the commit info
    (``.commit_url``, ``.oid``).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    with tempfile.TemporaryDirectory(prefix="cl2cm-push-") as staging:
        stage_checkpoint(folder, staging)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(folder_path=staging, repo_id=repo_id, revision=revision, commit_message=commit_message)


__all__ = [
    "CheckpointError",
    "PLOT_FILENAME",
    "TEMPLATE_PATH",
    "build_card",
    "check_checkpoint",
    "eval_results_from_rows",
    "plot_recall_at_k",
    "push_checkpoint",
    "results_table",
    "rows_from_metrics",
    "stage_checkpoint",
    "training_summary",
    "update_card_results",
    "usage_snippet",
]
