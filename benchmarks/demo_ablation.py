"""Demo-world ablation: does cross-lingual transfer help as MT gets noisier?

For MT noise rates 0.0, 0.3, 0.5 and three seeds, trains on the demo world (trainer/configs/demo.yaml)
and reports target-language test SumR (de, fr) of:
  english_only    stage 2 on visual-English pairs only (target queries zero-shot)
  mt_no_transfer  stage 2 on visual-English + visual-MT pairs, lambda_kt = 0, no stage 1
  cl2cm           both stages: stage 1, then stage 2 with relational distillation

    python benchmarks/demo_ablation.py [--seeds 0 1 2] [--noise 0.0 0.3 0.5] [--epochs 6]

Writes benchmarks/results/demo_ablation.md (and .json). A benchmark, not a test.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.provenance import cpu_model, git_commit  # noqa: E402
from cl2cm_hf.atomic import atomic_write_text  # noqa: E402
from cl2cm_hf.evaluation.records import flat_metrics  # noqa: E402
from cl2cm_hf.training.run import train  # noqa: E402

SYSTEMS = {
    "english_only": ["--stage", "cm", "--lambda_mt", "0", "--lambda_kt", "0"],
    "mt_no_transfer": ["--stage", "cm", "--lambda_kt", "0"],
    "cl2cm": ["--stage", "both"],
}


def run(system: str, noise: float, seed: int, epochs: float, work: Path) -> dict:
    out = work / f"{system}-noise{noise}-seed{seed}"
    overrides = [
        "--output_dir", str(out), "--seed", str(seed), "--demo_mt_noise", str(noise),
        "--num_train_epochs", str(epochs), "--query", "null", "--report_to", "none",
        "--disable_tqdm", "true", "--log_level", "warning", "--save_total_limit", "1",
        *SYSTEMS[system],
    ]
    # Finished runs are skipped by the caller (the partial results file); a folder left by a cut-short run is redone.
    return flat_metrics(train([str(REPO / "trainer" / "configs" / "demo.yaml"), *overrides, "--overwrite_output_dir", "true"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "cache" / "demo_ablation"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_ablation"))
    args = parser.parse_args()

    out = Path(args.out)
    partial = out.with_suffix(".partial.json")
    # Finished runs are kept after each run, so an interrupted benchmark continues where it stopped.
    rows = json.loads(partial.read_text())["rows"] if partial.exists() else []
    done = {(r["noise"], r["seed"], r["system"]) for r in rows if r.get("epochs") == args.epochs}
    for noise in args.noise:
        for seed in args.seeds:
            for system in SYSTEMS:
                if (noise, seed, system) in done:
                    continue
                t0 = time.time()
                metrics = run(system, noise, seed, args.epochs, Path(args.work))
                rows.append({"noise": noise, "seed": seed, "system": system, "epochs": args.epochs,
                             "de_sumr": metrics["de_sumr"], "fr_sumr": metrics["fr_sumr"],
                             "seconds": round(time.time() - t0, 1)})
                atomic_write_text(partial, json.dumps({"rows": rows}, indent=2))
                print(json.dumps(rows[-1]), flush=True)
    rows = [r for r in rows if r["noise"] in args.noise and r["seed"] in args.seeds and r.get("epochs") == args.epochs]

    commit = git_commit(short=True)
    header = [
        "# Demo-world ablation: target-language test SumR",
        "",
        f"Command: `python benchmarks/demo_ablation.py --seeds {' '.join(map(str, args.seeds))} "
        f"--noise {' '.join(map(str, args.noise))} --epochs {args.epochs:g}`  ",
        f"Commit {commit}; {cpu_model()}, {torch.get_num_threads()} torch threads; "
        f"{sum(r['seconds'] for r in rows) / 60:.1f} min of training in all.",
        "",
        "Mean ± standard deviation over seeds of SumR (max 600) on the demo test split (300 items,",
        "human-style target captions from templates the MT side never uses).",
        "",
        "| MT noise | system | de SumR | fr SumR |",
        "|---|---|---|---|",
    ]
    lines = []
    for noise in args.noise:
        for system in SYSTEMS:
            picked = [r for r in rows if r["noise"] == noise and r["system"] == system]
            cells = []
            for lang in ("de", "fr"):
                values = [r[f"{lang}_sumr"] for r in picked]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
            lines.append(f"| {noise:g} | {system} | {cells[0]} | {cells[1]} |")
    per_seed = ["", "Per seed:", "", "| MT noise | seed | system | de SumR | fr SumR | seconds |", "|---|---|---|---|---|---|"]
    per_seed += [f"| {r['noise']:g} | {r['seed']} | {r['system']} | {r['de_sumr']:.1f} | {r['fr_sumr']:.1f} | {r['seconds']} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(header + lines + per_seed) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps({"commit": commit, "rows": rows}, indent=2))
    partial.unlink()
    print("\n".join(header + lines))


if __name__ == "__main__":
    main()
