"""Speed benchmarks against references, each comparison measured side by side in one run.

    python benchmarks/speed.py                       # everything, writes benchmarks/results/speed.md
    python benchmarks/speed.py --only ot,eval        # some sections (ot, eval, gallery, step, encode, neighbour)
    python benchmarks/speed.py --only neighbour      # rewrites only the page's neighbour block
    python benchmarks/speed.py --quick               # smaller sizes, fewer repeats (a smoke run)
    python benchmarks/speed.py --quick --only eval,ot --out /tmp/speed_smoke.md   # leave the results file alone

Every comparison runs its contenders interleaved (the order rotates each repeat) and reports the
median over repeats of the per-repeat ratio, so a shared machine's load drift hits both sides
alike. Torch threads are set explicitly (``--threads``, default: 1) and reported per row;
the OT rows also run at 1 thread, the setting at which the single-threaded POT loop is compared.

Sections (one module each in benchmarks/speed_bench/, next to its timing helpers and the page writer):
  ot       `sinkhorn_ot_loss` (batched) vs a loop of POT `ot.sinkhorn` over the pairs, same epsilon,
           same iterations (stopThr=0), same value (asserted within 1e-4).
  eval     `retrieval_metrics` vs the similarity matmul alone and vs NRCCR's evaluation (numpy
           argsort of every query's full score row, Python loops; identical metrics asserted).
  gallery  exact top-10 of 1,000 queries in 1,000,000 x 256 items with `cl2cm_hf.retrieval.topk`:
           time, memory beyond the gallery, GFLOP/s vs this machine's torch matmul; faiss IndexFlatIP.
  step     a stage-2 training step of CL2CM vs a plain dual encoder (same towers, same batch).
  encode   text embedding throughput of `cl2cm_hf.inference.encode_texts`, length-sorted vs
           fixed padding.
  neighbour  the CPU thread policy next to one busy process vs alone: a demo-size stage-2 step under the
           chosen policy, the old default and 1 thread (each in its own process), and the wall time of a
           shrunk `make demo` (`--full-demo`: the full one) under the chosen policy and the old default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import REPO, git_commit
from benchmarks.speed_bench.encode import bench_encode
from benchmarks.speed_bench.evaluation import bench_eval
from benchmarks.speed_bench.gallery import bench_gallery
from benchmarks.speed_bench.neighbour import bench_neighbour
from benchmarks.speed_bench.ot_loss import bench_ot
from benchmarks.speed_bench.report import machine_description, write_report
from benchmarks.speed_bench.step import bench_step
from benchmarks.speed_bench.timing import ROWS

SECTIONS = {"ot": bench_ot, "eval": bench_eval, "gallery": bench_gallery, "step": bench_step, "encode": bench_encode,
            "neighbour": bench_neighbour}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch (and faiss) threads; 1 by default (see the module doc)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run; not for the results file)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed.md"))
    parser.add_argument("--full-demo", action="store_true", help="neighbour: time the full `make demo`, not a shrunk one")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    started, load_start, commit = time.time(), (os.getloadavg() if hasattr(os, "getloadavg") else None), git_commit(short=True)
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        print(f"== {name}", flush=True)
        section_start = time.time()
        SECTIONS[name](args)
        print(f"   ({time.time() - section_start:.0f} s)", flush=True)
    header = machine_description(args, started, load_start, commit)
    write_report(Path(args.out), ROWS, header)
    print("\n".join(header))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
