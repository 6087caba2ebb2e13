#!/usr/bin/env python
"""Quality benchmark on the offline real data: 5-fold cross-validation over the 1000 Multi30K
test_2016 images (ResNet-50 features, NLLB translations, human de/fr queries), two text towers,
five systems side by side:

- ``untrained``: the cross-modal network as built, no training (the floor);
- ``english_only``: trained on image-English pairs only; German/French queries are zero-shot;
- ``mt_no_transfer``: image-English + image-MT pairs, no transfer (``lambda_mt: 1``, ``lambda_kt: 0``, no stage 1);
- ``cl2cm``: the full method (stage 1 on the fold's English/MT pairs, stage 2 with relational
  distillation, text tower started from stage 1);
- ``cl2cm_no_kt``: the same with ``lambda_kt: 0`` (same stage 1): what the distillation term is worth.

Every system is a set of overrides of the same recipe (``trainer/configs/multi30k_r50_{e5,minilm}.yaml``)
and runs through trainer/run.py's own stage functions in this process (data read once per fold,
the frozen text layers' outputs computed once per distinct text for the whole run). Validation images
are carved from each fold's training images; the test images of a fold are only used for the
reported numbers, never for a choice.

    python benchmarks/quality_multi30k_r50.py                        # the full run (writes the results)
    python benchmarks/quality_multi30k_r50.py --folds 0 --quick      # a smoke run (nothing written)
    python benchmarks/quality_multi30k_r50.py --tune --folds 0 \\
        --variant cl2cm_kt0.5:base=cl2cm,lambda_kt=0.5              # validation SumR only (tuning, ablations)

    python benchmarks/quality_multi30k_r50.py --held-out cs          # a held-out query set (benchmarks/held_out.py)

Writes ``benchmarks/results/multi30k_r50.{md,json}`` (``--out``) and the per-query test ranks the
paired bootstrap intervals are computed from (``multi30k_r50_ranks.json``), rewritten after every fold.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks.held_out import HELD_OUT, HeldOut, held_out_queries, missing  # noqa: E402
from benchmarks.pairing import KT_ONLY, lambda_kt_partners  # noqa: E402
from benchmarks.provenance import git_commit, machine  # noqa: E402
from benchmarks.r50_stats import goal_check, load_ranks, paired_differences, rank_lists, ranks_path, sumr_by_fold  # noqa: E402
from benchmarks.selection import render_selection  # noqa: E402
from cl2cm_hf.evaluation.evaluator import CrossModalEvaluator  # noqa: E402
from cl2cm_hf.evaluation.records import flat_metrics  # noqa: E402
from cl2cm_hf.processing_cl2cm import build_processor  # noqa: E402
from cl2cm_hf.retrieval import METRIC_KEYS  # noqa: E402
from cl2cm_hf.training.data_sources import build_run_data  # noqa: E402
from cl2cm_hf.training.frozen_layers import FrozenLayerStore, FrozenPrefixBackbone  # noqa: E402
from cl2cm_hf.training.model_setup import build_cross_modal  # noqa: E402
from cl2cm_hf.training.recipe import RunSettings, load_config, parse_config  # noqa: E402
from cl2cm_hf.training.run import train_cross_lingual, train_cross_modal  # noqa: E402

TOWERS = {"e5": "trainer/configs/multi30k_r50_e5.yaml", "minilm": "trainer/configs/multi30k_r50_minilm.yaml"}
ME5_DIR = REPO / "benchmarks" / "cache" / "me5-small"
TEXT_CACHE_DIR = REPO / "benchmarks" / "cache" / "text_cache"
SYSTEMS = ("untrained", "english_only", "mt_no_transfer", "cl2cm", "cl2cm_no_kt")
# Each system is the recipe plus these settings. `cl2cm_no_kt` is the recipe without the distillation
# term (same stage 1): the partner that says what the term is worth.
SYSTEM_SETTINGS = {
    "untrained": {},
    "english_only": {"stage": "cm", "lambda_mt": 0.0, "lambda_kt": 0.0},
    "mt_no_transfer": {"stage": "cm", "lambda_mt": 1.0, "lambda_kt": 0.0},
    "cl2cm": {},
    "cl2cm_no_kt": {"lambda_kt": 0.0},
}
TABLE_KEYS = tuple(k for k in METRIC_KEYS if k.rpartition("_")[2] not in ("medr", "mnr"))  # the recalls and SumR
# Settings that do not change stage 1 (variants differing only in these reuse its network).
STAGE2_ONLY = {
    "output_dir", "lambda_mt", "lambda_kt", "kt_temperature", "precompute_teacher", "init_text_from_cross_lingual",
    "kt_teacher_keys", "kt_teacher_entropy", "kt_student_scale", "kt_queue_size", "kt_neighbour_group_size",
    "visual_hidden_size", "visual_dropout", "visual_num_layers", "visual_num_heads",
}
# Stage-2 settings whose stage-1 counterpart (cl_<name>) replaces them in stage 1 when set.
OVERRIDDEN_IN_STAGE1 = ("num_train_epochs", "learning_rate", "freeze_text_layers")
# A smoke run: a few steps per stage.
QUICK = {"max_steps": 4, "eval_strategy": "no", "logging_steps": 2}

START = time.time()


def say(message: str) -> None:
    print(f"[{time.time() - START:7.0f}s] {message}", flush=True)


def parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def parse_settings(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"expected key=value, got {item!r}")
        out[key] = parse_value(value)
    return out


def parse_variant(spec: str) -> tuple[str, str, dict]:
    """``name:base=<system>,key=value,...`` -> (name, base system, settings)."""
    name, _, rest = spec.partition(":")
    settings = parse_settings([kv for kv in rest.split(",") if kv])
    base = settings.pop("base", "cl2cm")
    if base not in SYSTEMS:
        raise SystemExit(f"variant {name}: base={base!r}; expected one of {SYSTEMS}")
    return name, base, settings


def ensure_me5() -> None:
    if (ME5_DIR / "config.json").exists():
        return
    say(f"building multilingual-e5-small into {ME5_DIR} (../shared/tools/build_me5_small.py, about 30 s)")
    tool = REPO.parent / "shared" / "tools" / "build_me5_small.py"
    subprocess.run([sys.executable, str(tool), str(ME5_DIR)], check=True)


class Run:
    """One tower x fold: the data and the evaluators, read once, shared by every system; `frozen_layers`
    is the process's store of frozen text-layer outputs (every fold and system share it)."""

    def __init__(self, tower: str, fold: int, common: dict, work: Path, frozen_layers: FrozenLayerStore,
                 held_out: HeldOut | None = None):
        self.tower, self.fold, self.common, self.work = tower, fold, common, work
        self.frozen_layers = frozen_layers
        values = self.values({})
        model_args, data_args, _, training_args = parse_config(values)
        self.data = build_run_data(data_args, model_args, training_args)
        self.processor = build_processor(self.data.tokenizer, model_args.text_prefix)
        evaluator = lambda queries, split: CrossModalEvaluator(  # noqa: E731
            queries, self.data.features, self.processor, data_args.target_langs, data_args.max_length,
            dataset=self.data.name, split=split,
        )
        self.validation = evaluator(self.data.validation_queries, "validation")
        test_queries = self.data.test_queries
        if held_out is not None and held_out.task != 1:  # the fold's test images, the held-out set's captions
            test_queries = held_out_queries(data_args.shared_root, held_out, set(test_queries["visual_id"]))
        self.test = evaluator(test_queries, "test")
        self.langs = list(data_args.target_langs)
        self.stage1_models = {}
        # The recipe's untrained network: the "untrained" system, and the key of the pretrained tower's cache.
        set_seed(training_args.seed)
        self.untrained = build_cross_modal(
            model_args, self.data.tokenizer, data_args.max_length, self.data.features.feature_dim, frozen_layers=frozen_layers
        )

    def values(self, settings: dict) -> dict:
        out = str(self.work / self.tower / f"fold{self.fold}")
        return load_config(REPO / TOWERS[self.tower], {**self.common, "fold": self.fold, "output_dir": out, **settings})

    def system(self, name: str, base: str, settings: dict, evaluate_test: bool) -> dict:
        """Train (or build) one system; its validation and (optionally) test metrics and timings."""
        values = self.values({**SYSTEM_SETTINGS[base], **settings})
        values["output_dir"] = str(Path(values["output_dir"]) / name)
        run_settings = RunSettings.from_recipe(values)
        model_args, data_args, cl2cm_args, training_args = run_settings.groups
        out = Path(training_args.output_dir)
        started = time.time()
        timings = {}
        if base == "untrained":
            model = self.untrained if not settings else build_cross_modal(
                model_args, self.data.tokenizer, data_args.max_length, self.data.features.feature_dim,
                frozen_layers=self.frozen_layers,
            )
        else:
            teacher = None
            if cl2cm_args.stage == "both":
                # Variants that differ only in stage-2 settings share one stage-1 network (it is frozen from here on).
                ignored = STAGE2_ONLY | {k for k in OVERRIDDEN_IN_STAGE1 if values.get(f"cl_{k}") is not None}
                key = json.dumps({k: v for k, v in sorted(values.items()) if k not in ignored}, default=str)
                if key not in self.stage1_models:
                    self.stage1_models[key] = train_cross_lingual(run_settings, self.data, self.processor, out, self.frozen_layers)
                    timings["stage1_s"] = round(time.time() - started, 1)
                teacher = self.stage1_models[key]
            trainer = train_cross_modal(run_settings, self.data, self.processor, out, teacher, self.frozen_layers)
            model = trainer.accelerator.unwrap_model(trainer.model)
        timings["train_s"] = round(time.time() - started, 1)
        model.eval()
        # Flat scalars ({"de_t2v_r1": ..., "sumr": mean SumR}): the form this report and the tuning log keep.
        result = {"validation": flat_metrics(self.validation(model)), "timings": timings}
        if evaluate_test:
            ranks = self.test.ranks(model)
            result["test"] = flat_metrics(self.test.metrics(ranks))
            result["test_ranks"] = {lang: rank_lists(self.test, lang, r) for lang, r in ranks.items()}
        timings["total_s"] = round(time.time() - started, 1)
        shutil.rmtree(out, ignore_errors=True)  # stage folders and logs of the run: not needed here
        return result

    def prefill(self) -> float:
        """Run every text of the benchmark (all folds) through the pretrained tower's frozen layers once
        (the cache then serves every fold and system); returns the seconds it took."""
        from cl2cm_hf.inference import encode_texts
        from cl2cm_hf.training.data_sources import _load_r50

        started = time.time()
        _, data_args, _, _ = parse_config(self.values({}))
        everything = _load_r50(str(Path(data_args.shared_root).resolve()), tuple(data_args.target_langs), data_args.first_caption_only)
        texts = list(dict.fromkeys([*everything["pairs"]["source_text"], *everything["pairs"]["target_text"], *everything["queries"]["text"]]))
        model = self.untrained.eval()
        encode_texts(model.get_text_features, self.processor, texts, 128, data_args.max_length)
        return time.time() - started

    def pretrained_cache_keys(self) -> list[str]:
        backbone = self.untrained.text_model.backbone
        return backbone.cache_keys() if isinstance(backbone, FrozenPrefixBackbone) else []


def load_text_caches(folder: Path, store: FrozenLayerStore) -> dict[str, int]:
    sizes = {}
    for path in sorted(folder.glob("*.pt")):
        key = store.load(path)
        sizes[key] = store.size(key)
    if sizes:
        say(f"loaded {len(sizes)} frozen-text-layer caches from {folder} ({sum(sizes.values())} sequences)")
    return sizes


def save_text_caches(folder: Path, store: FrozenLayerStore, keys: list[str], sizes: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        if store.size(key) > sizes.get(key, 0):
            store.save(key, folder / f"{key}.pt")
            sizes[key] = store.size(key)


def metric_row(tower, system, lang, fold, metrics: dict) -> dict:
    return {"tower": tower, "system": system, "lang": lang, "fold": fold, **{k: round(float(metrics[k]), 3) for k in METRIC_KEYS}}


def summarise(rows: list[dict]) -> list[dict]:
    """Per-fold rows plus mean and std (sample, n-1) over folds per tower x system x lang."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if isinstance(row["fold"], int):
            groups.setdefault((row["tower"], row["system"], row["lang"]), []).append(row)
    out = [r for r in rows if isinstance(r["fold"], int)]
    for (tower, system, lang), members in groups.items():
        for stat in ("mean", "std"):
            values = {}
            for key in METRIC_KEYS:
                xs = [m[key] for m in members]
                if stat == "mean":
                    values[key] = statistics.fmean(xs)
                else:
                    values[key] = statistics.stdev(xs) if len(xs) > 1 else 0.0
            out.append(metric_row(tower, system, lang, stat, values))
    return out


def markdown(report: dict) -> str:
    rows = report["rows"]
    systems = [s for s in report["systems"]]
    lines = [
        "# Multi30K test_2016, ResNet-50 features: 5-fold cross-validation",
        "",
        "Generated by `benchmarks/quality_multi30k_r50.py`; do not edit by hand.",
        "",
        "**What the data is.** The 1000 Multi30K test_2016 images (Flickr30K) as real ResNet-50 "
        "global-average-pool features (2048-d, one vector per image), their five English captions "
        "(Task 2), NLLB-3.3B machine translations of English caption 1 into German and French as the "
        "only target-language training text, and the human German/French translations (Task 1) as the "
        "test queries. 5-fold cross-validation over images (800 train / 200 test per fold, permutation "
        "seed 0); in each fold 100 of the 800 training images are held out for validation, so 700 "
        "images train. Gallery per fold: 200 images, one human query per image and language.",
        "",
        "**What it is not.** Not the paper's setting (Multi30K train, 29k images with CLIP/ResNet "
        "features or a fine-tuned backbone, mBERT, 1000-image test gallery): the training set here is "
        "40 times smaller, the visual features are frozen ImageNet ResNet-50 vectors, and the gallery is "
        "200 images. Numbers are not comparable with the paper's tables.",
        "",
        *([f"**Held-out query set `{report['held_out']['name']}`** (replaces the de/fr queries above): "
           f"{report['held_out']['note']}.", ""] if report.get("held_out") else []),
        f"- command: `{report['command']}`",
        f"- commit: `{report['commit']}`",
        f"- machine: {report['machine']}",
        f"- started: {report['started']}; runtime: {report['runtime_s'] / 60:.1f} min (wall clock)"
        + ("" if report["complete"] else " (**partial: run still in progress or stopped**)"),
        f"- machine load (1-min load average, 2 cores, shared with other jobs): {report.get('load_average', '?')}",
        "- frozen text layers computed or loaded from the disk cache in: "
        + ", ".join(f"{t} {v:.0f} s" for t, v in report.get("prefill_s", {}).items())
        + f" ({report.get('disk_cache_at_start', 0)} sequences in benchmarks/cache/text_cache at start)",
        f"- folds: {report['folds']}; towers: {', '.join(report['towers'])}; systems: {', '.join(systems)}",
        "",
        "Recalls in percent; SumR = t2v R@1+5+10 + v2t R@1+5+10 (max 600). Mean ± std (sample) over folds.",
        "",
    ]
    for tower in report["towers"]:
        lines += [f"## {tower}: {report['tower_notes'].get(tower, '')}", ""]
        for lang in report["langs"]:
            lines += [f"### {tower}, {lang} queries", "", "| system | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
            for system in systems:
                mean = next((r for r in rows if (r["tower"], r["system"], r["lang"], r["fold"]) == (tower, system, lang, "mean")), None)
                std = next((r for r in rows if (r["tower"], r["system"], r["lang"], r["fold"]) == (tower, system, lang, "std")), None)
                if mean is None:
                    continue
                cells = [f"{mean[k]:.1f} ± {std[k]:.1f}" for k in TABLE_KEYS]
                lines.append(f"| {system} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## SumR per fold", "", "| tower | lang | system | " + " | ".join(f"fold {f}" for f in report["folds"]) + " | mean | val SumR (mean) |",
              "|---" * (len(report["folds"]) + 5) + "|"]
    for tower in report["towers"]:
        for lang in report["langs"]:
            for system in systems:
                by_fold = sumr_by_fold(rows, tower, system, lang)
                if "mean" not in by_fold:
                    continue
                vals = [report["validation"].get(f"{tower}|{system}|{lang}|{f}") for f in report["folds"]]
                vals = [v for v in vals if v is not None]
                val = f"{statistics.fmean(vals):.1f}" if vals else "-"
                cells = [f"{by_fold[f]:.1f}" if f in by_fold else "-" for f in report["folds"]]
                lines.append(f"| {tower} | {lang} | {system} | " + " | ".join(cells) + f" | {by_fold['mean']:.1f} | {val} |")
    ranks = report.get("ranks", {})
    pooled = ("Pooled: the difference over the test queries of all folds together (1000 per language), with a 95% "
              "percentile interval from 10,000 paired bootstrap resamples of test images within each fold "
              "(`cl2cm_hf/evaluation/bootstrap.py`: an image carries its query's t2v rank and its own v2t rank; it "
              "covers which queries were drawn, not the training runs' randomness).")
    lines += paired_differences(
        report, ranks, lambda system: "mt_no_transfer" if system not in ("mt_no_transfer", "untrained") else None,
        "## Paired differences against mt_no_transfer",
        "Test SumR of a system minus that of `mt_no_transfer` on the same fold: mean ± std over folds, and the "
        "number of folds where the system is ahead. " + pooled,
    )
    overrides = {run["system"]: {**SYSTEM_SETTINGS.get(run["base"], {}), **run["settings"]} for run in report["runs"]
                 if run["base"] != "untrained"}  # built, not trained: the term never acted on it
    partners = lambda_kt_partners(overrides)
    lines += paired_differences(
        report, ranks, partners.get,
        "## Paired differences against lambda_kt 0 (what the distillation term is worth)",
        "Test SumR of a system minus that of its partner with `lambda_kt: 0` and the same settings otherwise (settings "
        f"that act only through the distillation term aside: {', '.join(sorted(KT_ONLY))}), on the same fold. Mean ± "
        "std over folds, and the number of folds where the system is ahead. " + pooled,
    )
    if "cl2cm" in report["systems"] and "mt_no_transfer" in report["systems"]:
        lines += goal_check(report, ranks, partners.get("cl2cm"))
    lines += ["", "## Settings", "", *report["settings_notes"], ""]
    if report.get("extra_markdown"):
        lines += [report["extra_markdown"], ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--variant", action="append", default=[], help="name:base=<system>,key=value,... (an extra system)")
    parser.add_argument("--set", nargs="*", default=[], help="key=value settings for every system (after the recipe)")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test); writes nothing")
    parser.add_argument("--tune", action="store_true", help="validation metrics only (never test); writes --tune-out")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "multi30k_r50"))
    parser.add_argument("--tune-out", default=str(REPO / "benchmarks" / "cache" / "tuning.jsonl"))
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "cache" / "runs"))
    parser.add_argument("--extra-markdown", default=None, help="a markdown file appended to the results page")
    parser.add_argument("--no-disk-cache", action="store_true",
                        help="do not read or write the frozen text layers' outputs under benchmarks/cache/text_cache")
    parser.add_argument("--render-tuning", metavar="MD", help="write the --tune-out runs as markdown to MD and stop")
    parser.add_argument("--tuning-reference", default="cl2cm", help="the variant the selection across languages measures gains against")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="combine the results of runs made in parallel (e.g. one per tower) into --out and stop")
    parser.add_argument("--held-out", choices=sorted(HELD_OUT),
                        help="a held-out query set (benchmarks/held_out.py) instead of the de/fr queries; "
                             "--out defaults to benchmarks/results/multi30k_r50_heldout_<set>")
    args = parser.parse_args(argv)
    held_out = HELD_OUT[args.held_out] if args.held_out else None
    if held_out is not None:
        absent = missing(load_config(REPO / TOWERS[args.towers[0]], {})["shared_root"], held_out)
        if absent:
            print(f"held-out set {held_out.name}: missing {', '.join(map(str, absent))} (not in this copy of ../shared)",
                  file=sys.stderr)
            raise SystemExit(2)
        if args.out == parser.get_default("out"):
            args.out = str(REPO / "benchmarks" / "results" / f"multi30k_r50_heldout_{held_out.name}")
    if args.merge:
        merge_reports([Path(m) for m in args.merge], Path(args.out), args.extra_markdown)
        return
    if args.render_tuning:
        Path(args.render_tuning).write_text(render_tuning(Path(args.tune_out), "Tuning and ablations (validation)", args.tuning_reference) + "\n")
        return

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if "e5" in args.towers:
        ensure_me5()

    common = {"disable_tqdm": True, **(QUICK if args.quick else {}), **parse_settings(args.set),
              **({"target_langs": [held_out.lang]} if held_out else {})}
    variants = [(s, s, {}) for s in args.systems] + [parse_variant(v) for v in args.variant]
    command = "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO)) if Path(sys.argv[0]).exists() else sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    write = not args.quick and not args.tune
    report = {
        "command": command,
        "commit": git_commit(),
        "machine": machine(torch),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "runtime_s": 0.0,
        "complete": False,
        "towers": args.towers,
        "folds": args.folds,
        "systems": [name for name, _, _ in variants],
        "langs": [],
        "rows": [],
        "validation": {},
        "runs": [],
        "ranks": {},  # "tower|system|lang|fold": per-query test ranks (written beside the results: *_ranks.json)
        "held_out": held_out._asdict() if held_out else None,
        "tower_notes": {},
        "prefill_s": {},
        "load_average": f"at the start {os.getloadavg()[0]:.1f}",
        "settings_notes": [],
        "extra_markdown": Path(args.extra_markdown).read_text() if args.extra_markdown else "",
    }
    per_fold_rows: list[dict] = []
    frozen_layers = FrozenLayerStore()  # one for the process: every fold and system reads it
    cache_sizes = {} if args.no_disk_cache else load_text_caches(TEXT_CACHE_DIR, frozen_layers)
    report["disk_cache_at_start"] = sum(cache_sizes.values())
    kept_caches: list[str] = list(cache_sizes)
    for tower in args.towers:
        recipe = load_config(REPO / TOWERS[tower], common)
        report["tower_notes"][tower] = (
            f"`{TOWERS[tower]}` (text_model `{recipe['text_model']}`, freeze_text_layers {recipe['freeze_text_layers']}, "
            f"cache_frozen_text_layers {recipe['cache_frozen_text_layers']})"
        )
        for fold in args.folds:
            say(f"{tower} fold {fold}: reading data")
            run = Run(tower, fold, common, Path(args.work), frozen_layers, held_out)
            if fold == args.folds[0]:
                seconds = run.prefill()
                report["prefill_s"][tower] = round(seconds, 1)
                say(f"{tower}: frozen text layers of every text of the benchmark computed or loaded in {seconds:.0f} s")
                if not args.no_disk_cache:
                    save_text_caches(TEXT_CACHE_DIR, frozen_layers, run.pretrained_cache_keys(), cache_sizes)
            label = {lang: held_out.name if held_out else lang for lang in run.langs}  # the rows' language label
            report["langs"] = list(label.values())
            for name, base, settings in variants:
                say(f"{tower} fold {fold}: {name} ...")
                result = run.system(name, base, settings, evaluate_test=not args.tune)
                val = result["validation"]
                line = f"{tower} fold {fold}: {name} done in {result['timings']['train_s']:.0f} s; validation SumR " + ", ".join(
                    f"{lang} {val[f'{lang}_sumr']:.1f}" for lang in run.langs
                )
                if "test" in result:
                    line += "; test SumR " + ", ".join(f"{lang} {result['test'][f'{lang}_sumr']:.1f}" for lang in run.langs)
                say(line)
                record = {"tower": tower, "fold": fold, "system": name, "base": base, "settings": {**common, **settings},
                          **{k: v for k, v in result.items() if k != "test_ranks"}}
                report["runs"].append({k: v for k, v in record.items() if k not in ("validation", "test")})
                for lang in run.langs:
                    report["validation"][f"{tower}|{name}|{label[lang]}|{fold}"] = round(val[f"{lang}_sumr"], 3)
                    if "test" in result:
                        test = {k: result["test"][f"{lang}_{k}"] for k in METRIC_KEYS}
                        per_fold_rows.append(metric_row(tower, name, label[lang], fold, test))
                        report["ranks"][f"{tower}|{name}|{label[lang]}|{fold}"] = result["test_ranks"][lang]
                if not args.no_disk_cache:  # a run stopped midway keeps what it computed
                    save_text_caches(TEXT_CACHE_DIR, frozen_layers, run.pretrained_cache_keys(), cache_sizes)
                if args.tune:
                    Path(args.tune_out).parent.mkdir(parents=True, exist_ok=True)
                    with open(args.tune_out, "a") as f:
                        f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), **record}) + "\n")
            pretrained = run.pretrained_cache_keys()
            if not args.no_disk_cache:
                save_text_caches(TEXT_CACHE_DIR, frozen_layers, pretrained, cache_sizes)
            frozen_layers.keep([*pretrained, *kept_caches])  # the fold's fine-tuned towers' caches go
            kept_caches.extend(pretrained)
            del run
            report["rows"] = summarise(per_fold_rows)
            report["runtime_s"] = round(time.time() - START, 1)
            if write:
                write_report(report, Path(args.out))
    report["complete"] = True
    report["runtime_s"] = round(time.time() - START, 1)
    report["load_average"] += f", at the end {os.getloadavg()[0]:.1f}"
    report["settings_notes"] = settings_notes(args, common)
    if write:
        write_report(report, Path(args.out))
        say(f"wrote {args.out}.md and {args.out}.json")
    if report["rows"]:
        print(markdown(report))


def settings_notes(args, common) -> list[str]:
    notes = [f"- every system: the tower's recipe plus `{json.dumps(common)}`"]
    for system, settings in SYSTEM_SETTINGS.items():
        notes.append(f"- `{system}`: " + (f"`{json.dumps(settings)}`" if settings else "the recipe as is") +
                     (" (built, not trained)" if system == "untrained" else ""))
    for v in args.variant:
        notes.append(f"- variant `{v}`")
    return notes


def render_tuning(jsonl: Path, title: str, reference: str = "cl2cm") -> str:
    """The tuning/ablation runs (validation SumR, never test) as a markdown section: one row per
    variant, its validation SumR per fold and the mean over the folds it ran on; then, per tower, the
    selection across languages (`benchmarks.selection`) against the variant named `reference`."""
    records = {}
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        own = {k: v for k, v in r["settings"].items() if k != "disable_tqdm"}
        records[(r["tower"], r["system"], r["base"], json.dumps(own, sort_keys=True), r["fold"])] = r  # the latest run counts
    lines = [f"## {title}", "",
             "Validation split of each fold (100 images carved from its training images), never its test images. "
             "Each row: a system or a variant of it (base system plus the listed settings, on top of the recipe); "
             "cells: mean of de and fr validation SumR.", ""]
    for tower in dict.fromkeys(k[0] for k in records):
        folds = sorted({k[4] for k in records if k[0] == tower})
        variants = list(dict.fromkeys(k[1:4] for k in records if k[0] == tower))
        lines += [f"**{tower}**", "", "| variant | base | settings | " + " | ".join(f"fold {f}" for f in folds) + " | mean |",
                  "|---" * (len(folds) + 4) + "|"]
        for name, base, own in variants:
            got = {f: records[(tower, name, base, own, f)]["validation"]["sumr"] for f in folds if (tower, name, base, own, f) in records}
            cells = [f"{got[f]:.1f}" if f in got else "-" for f in folds]
            lines.append(f"| {name} | {base} | `{own[1:-1] or '-'}` | " + " | ".join(cells) + f" | {statistics.fmean(got.values()):.1f} |")
        lines.append("")
        # Latest run of each variant name: {name: {lang: {fold: validation SumR}}}, for the selection across languages.
        scores, langs = {}, []
        for (tower_, name, _, _, fold), r in records.items():
            if tower_ == tower:
                langs = [k.removesuffix("_sumr") for k in r["validation"] if k.endswith("_sumr")]
                for lang in langs:
                    scores.setdefault(name, {}).setdefault(lang, {})[fold] = r["validation"][f"{lang}_sumr"]
        if reference in scores and len(langs) > 1:
            lines += [f"Selection across languages ({tower}; gains over `{reference}`, mean over shared folds; "
                      "`benchmarks/selection.py`):", "", *render_selection(scores, reference, langs), ""]
    return "\n".join(lines)


def merge_reports(paths: list[Path], out: Path, extra_markdown: str | None) -> None:
    parts = [json.loads(p.read_text()) for p in paths]
    merged = dict(parts[0])
    merged["command"] = " ; ".join(p["command"] for p in parts) + "  (each tower its own process, then --merge)"
    merged["commit"] = " ; ".join(dict.fromkeys(f"{', '.join(p['towers'])}: {p['commit']}" for p in parts))
    merged["runtime_s"] = max(p["runtime_s"] for p in parts)
    merged["complete"] = all(p["complete"] for p in parts)
    merged["load_average"] = "; ".join(f"{', '.join(p['towers'])}: {p.get('load_average', '?')}" for p in parts)
    merged["disk_cache_at_start"] = max(p.get("disk_cache_at_start", 0) for p in parts)
    for key in ("towers", "rows", "runs", "settings_notes"):
        merged[key] = [x for p in parts for x in p[key] if key != "settings_notes" or x not in parts[0][key] or p is parts[0]]
    for key in ("validation", "tower_notes", "prefill_s"):
        merged[key] = {k: v for p in parts for k, v in p.get(key, {}).items()}
    merged["ranks"] = {k: v for p in paths for k, v in load_ranks(p.with_suffix("")).items()}
    merged["extra_markdown"] = Path(extra_markdown).read_text() if extra_markdown else ""
    write_report(merged, out)
    say(f"wrote {out}.md and {out}.json from {len(parts)} runs")


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    report = copy.deepcopy(report)
    if not report["settings_notes"]:
        report["settings_notes"] = ["- (written at the end of the run)"]
    tmp_md, tmp_json = out.with_suffix(".md.tmp"), out.with_suffix(".json.tmp")
    tmp_ranks = ranks_path(out).with_suffix(".json.tmp")
    tmp_md.write_text(markdown(report))
    tmp_json.write_text(json.dumps({k: v for k, v in report.items() if k not in ("extra_markdown", "ranks")}, indent=1) + "\n")
    tmp_ranks.write_text(json.dumps(report.get("ranks", {}), separators=(",", ":")) + "\n")
    tmp_md.replace(out.with_suffix(".md"))
    tmp_json.replace(out.with_suffix(".json"))
    tmp_ranks.replace(ranks_path(out))


if __name__ == "__main__":
    main()
