"""Demo-world ablation: does cross-lingual transfer help as MT gets worse?

Trains on the demo world (trainer/configs/demo.yaml) for each MT surface-noise rate (`--noise`),
semantic MT error rate (`--semantic`: a wrong colour, noun or relation in that share of
translations) and seed, and reports target-language test SumR (de, fr) of:
  english_only    stage 2 on visual-English pairs only (target queries zero-shot)
  mt_no_transfer  stage 2 on visual-English + visual-MT pairs, lambda_kt = 0, no stage 1
  cl2cm           both stages: stage 1, then stage 2 with relational distillation
  cl2cm_no_kt     both stages, lambda_kt = 0 (the text tower still starts from stage 1)
and CL2CM's lead over translation-only (cl2cm - mt_no_transfer, paired by seed).

    python benchmarks/demo_ablation.py [--seeds 0 1 2] [--noise 0.0 0.3 0.5] [--epochs 6]
    python benchmarks/demo_ablation.py --confusable 0.5 --semantic 0 0.2 0.4 --noise 0.3 \\
        --systems mt_no_transfer cl2cm --items 800 --out benchmarks/results/demo_ablation_semantic

Writes <out>.md and <out>.json (default benchmarks/results/demo_ablation). A benchmark, not a test.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pairing import lambda_kt_partners  # noqa: E402
from benchmarks.provenance import git_commit, machine  # noqa: E402
from cl2cm_hf.atomic import atomic_write_text  # noqa: E402
from cl2cm_hf.evaluation.records import flat_metrics  # noqa: E402
from cl2cm_hf.training.run import train  # noqa: E402

SYSTEMS = {
    "english_only": ["--stage", "cm", "--lambda_mt", "0", "--lambda_kt", "0"],
    "mt_no_transfer": ["--stage", "cm", "--lambda_kt", "0"],
    "cl2cm": ["--stage", "both"],
    "cl2cm_no_kt": ["--stage", "both", "--lambda_kt", "0"],
}
LANGS = ("de", "fr")


def run(system: str, condition: dict, seed: int, args: argparse.Namespace) -> dict:
    name = "-".join(f"{key}{value}" for key, value in condition.items())
    overrides = [
        "--output_dir", str(Path(args.work) / f"{system}-{name}-seed{seed}"), "--seed", str(seed),
        "--demo_mt_noise", str(condition["noise"]), "--demo_mt_semantic_errors", str(condition["semantic"]),
        "--demo_confusable", str(args.confusable), "--num_train_epochs", str(args.epochs),
        "--query", "null", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning",
        "--save_total_limit", "1", *SYSTEMS[system],
    ]
    overrides += ["--demo_items", str(args.items)] if args.items else []
    overrides += ["--cl_num_train_epochs", str(args.cl_epochs)] if args.cl_epochs else []
    # Finished runs are skipped by the caller (the partial results file); a folder left by a cut-short run is redone.
    return flat_metrics(train([str(REPO / "trainer" / "configs" / "demo.yaml"), *overrides, "--overwrite_output_dir", "true"]))


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.5], help="MT surface-noise rates")
    parser.add_argument("--semantic", type=float, nargs="+", default=[0.0], help="semantic MT error rates")
    parser.add_argument("--confusable", type=float, default=0.0, help="harder world (demo_confusable)")
    parser.add_argument("--systems", nargs="+", default=["english_only", "mt_no_transfer", "cl2cm"],
                        help=f"of {sorted(SYSTEMS)} and the --variant names")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="an extra system: cl2cm with these settings (e.g. cl2cm_mt0:lambda_mt=0)")
    parser.add_argument("--items", type=int, default=None, help="training items (default: the recipe's)")
    parser.add_argument("--epochs", type=float, default=6, help="stage-2 epochs")
    parser.add_argument("--cl-epochs", type=float, default=None, help="stage-1 epochs (default: the recipe's)")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "cache" / "demo_ablation"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_ablation"))
    args = parser.parse_args()
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        pairs = [item.partition("=") for item in settings.split(",") if item]
        if not name or any(not eq for _, eq, _ in pairs):
            parser.error(f"--variant {spec!r}: expected NAME:KEY=VALUE,...")
        SYSTEMS[name] = SYSTEMS["cl2cm"] + [token for key, _, value in pairs for token in (f"--{key}", value)]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"--systems {unknown}: expected one of {sorted(SYSTEMS)}")

    commit, load_start, wall_start = git_commit(short=True), os.getloadavg(), time.time()
    out = Path(args.out)
    partial = out.with_suffix(".partial.json")
    setup = {"epochs": args.epochs, "cl_epochs": args.cl_epochs, "items": args.items, "confusable": args.confusable}
    conditions = [{"noise": noise, "semantic": semantic} for noise in args.noise for semantic in args.semantic]
    # Finished runs are kept after each run, so an interrupted benchmark continues where it stopped.
    rows = json.loads(partial.read_text())["rows"] if partial.exists() else []
    rows = [r for r in rows if all(r.get(key) == value for key, value in setup.items())]

    def picked(condition: dict, system: str, seed: int | None = None) -> list[dict]:
        return [r for r in rows if r["noise"] == condition["noise"] and r.get("semantic", 0.0) == condition["semantic"]
                and r["system"] == system and (seed is None or r["seed"] == seed)]

    for condition in conditions:
        for seed in args.seeds:
            for system in args.systems:
                if picked(condition, system, seed):
                    continue
                t0 = time.time()
                metrics = run(system, condition, seed, args)
                rows.append({**condition, "seed": seed, "system": system, **setup,
                             **{f"{lang}_sumr": metrics[f"{lang}_sumr"] for lang in LANGS},
                             "seconds": round(time.time() - t0, 1)})
                atomic_write_text(partial, json.dumps({"rows": rows}, indent=2))
                print(json.dumps(rows[-1]), flush=True)
    rows = [r for c in conditions for s in args.systems for r in picked(c, s) if r["seed"] in args.seeds]
    wall_min, load_end = (time.time() - wall_start) / 60, os.getloadavg()

    header = [
        "# Demo-world ablation: target-language test SumR",
        "",
        f"Command: `python benchmarks/demo_ablation.py {shlex.join(sys.argv[1:])}`  ",
        f"Commit {commit}; {machine(torch)}.  ",
        (f"Wall time of this invocation {wall_min:.1f} min ({sum(r['seconds'] for r in rows) / 60:.1f} min of training "
         f"in the rows below); load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
         f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end."),
        "",
        (f"World: demo recipe with {args.items or 'its'} training items, confusable {args.confusable:g}; stage-2 epochs "
         f"{args.epochs:g}, stage-1 epochs {'as the recipe' if args.cl_epochs is None else f'{args.cl_epochs:g}'}. "
         "Mean ± standard deviation over seeds of SumR (max 600) on the demo test split (human-style target captions "
         "from templates the MT side never uses)."),
        "",
        "| MT noise | semantic errors | system | de SumR | fr SumR |",
        "|---|---|---|---|---|",
    ]
    lines = []
    for condition in conditions:
        for system in args.systems:
            cells = [_mean_sd([r[f"{lang}_sumr"] for r in picked(condition, system)]) for lang in LANGS]
            lines.append(f"| {condition['noise']:g} | {condition['semantic']:g} | {system} | {cells[0]} | {cells[1]} |")
    lead = []
    # Each CL2CM system against translation-only and against its partner with lambda_kt 0 (benchmarks/pairing.py).
    partners = lambda_kt_partners({s: {k.removeprefix("--"): v for k, v in zip(SYSTEMS[s][::2], SYSTEMS[s][1::2])} for s in args.systems})
    partners = {s: p for s, p in partners.items() if s.startswith("cl2cm")}
    pairs = [(system, other) for system in args.systems if system in partners
             for other in ("mt_no_transfer", partners[system]) if other in args.systems]
    for system, other in pairs:
        lead += ["", f"{system} minus {other}, paired by seed (mean ± sd over seeds):", "",
                 "| MT noise | semantic errors | de | fr | mean of de and fr |", "|---|---|---|---|---|"]
        for condition in conditions:
            diffs = {lang: [a[f"{lang}_sumr"] - b[f"{lang}_sumr"] for seed in args.seeds
                            for a in picked(condition, system, seed) for b in picked(condition, other, seed)] for lang in LANGS}
            both = [(d + f) / 2 for d, f in zip(diffs["de"], diffs["fr"])]
            lead.append(f"| {condition['noise']:g} | {condition['semantic']:g} | {_mean_sd(diffs['de'])} | "
                        f"{_mean_sd(diffs['fr'])} | {_mean_sd(both)} |")
    per_seed = ["", "Per seed:", "", "| MT noise | semantic errors | seed | system | de SumR | fr SumR | seconds |",
                "|---|---|---|---|---|---|---|"]
    per_seed += [f"| {r['noise']:g} | {r.get('semantic', 0.0):g} | {r['seed']} | {r['system']} | {r['de_sumr']:.1f} | "
                 f"{r['fr_sumr']:.1f} | {r['seconds']} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(header + lines + lead + per_seed) + "\n")
    record = {"command": f"python benchmarks/demo_ablation.py {shlex.join(sys.argv[1:])}", "commit": commit,
              "machine": machine(torch), "wall_minutes": round(wall_min, 2), "load_start": load_start, "load_end": load_end,
              "rows": rows}
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2))
    partial.unlink()
    print("\n".join(header + lines + lead))


if __name__ == "__main__":
    main()
