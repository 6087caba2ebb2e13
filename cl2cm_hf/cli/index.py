"""``cl2cm-index``: build a search index (see `cl2cm_hf.search.index_build` for what it reads and writes).

    torchrun --nproc_per_node 2 -m cl2cm_hf.cli.index MODEL --images DIR --out INDEX
    cl2cm-index MODEL --images DIR --out INDEX --engine ray [--ray-address auto]   # Ray Data (cl2cm_hf.search.ray_build)
"""

from __future__ import annotations

import argparse
import sys

from cl2cm_hf.cli import run_tool
from cl2cm_hf.search.checks import int_option, printable
from cl2cm_hf.search.decode import DEFAULT_MAX_PIXELS
from cl2cm_hf.search.decode_video import DEFAULT_MAX_SECONDS
from cl2cm_hf.search.index_build import FAISS_KINDS, build_index
from cl2cm_hf.search.index_files import REPORT_FILE
from cl2cm_hf.search.sources import COMPARE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-index", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Folders: hidden files are left out; symlinked sub-folders are followed, a link "
                                            "back to a folder already listed (a loop) is skipped and reported.")
    parser.add_argument("model", help="cross-modal checkpoint folder or hub id")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="image folder, text file listing image paths, or a datasets folder")
    what.add_argument("--videos", help="video folder or list file (videos only; --images takes pictures and videos together)")
    what.add_argument("--features", help="feature store or image/frame store folder")
    parser.add_argument("--pictures", help="folder of pictures shown for feature rows: <id>.<ext> or <id>/ frames")
    parser.add_argument("--out", required=True, help="index folder: new, empty, or an index cl2cm-index wrote of the same "
                        "input (updated in place); never the input or checkpoint folder, or a folder holding other files")
    parser.add_argument("--overwrite", action="store_true", help="replace an index of another input in --out")
    parser.add_argument("--compare", default="mtime", choices=sorted(COMPARE),
                        help="what a rebuild compares to find changed files: mtime (default) = path + size + "
                             "modification time, fast but blind to a rewrite that keeps both; hash = sha256 of the content")
    parser.add_argument("--batch-size", type=int_option("batch_size"), default=64)
    parser.add_argument("--num-workers", type=int_option("num_workers"), default=2, help="DataLoader processes decoding images and videos")
    parser.add_argument("--chunk-size", type=int_option("chunk_size"), default=1024,
                        help="items per shard (resume and process split unit), rounded down to a multiple of --batch-size")
    parser.add_argument("--max-pixels", type=int_option("max_pixels"), default=DEFAULT_MAX_PIXELS, help="larger images are skipped")
    parser.add_argument("--num-frames", type=int_option("num_frames"), default=None,
                        help="frames sampled uniformly per video (default: the checkpoint's video processor's, else 8)")
    parser.add_argument("--max-video-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="longer videos are skipped")
    parser.add_argument("--faiss", default="auto", choices=FAISS_KINDS,
                        help="approximate index: auto (hnsw when faiss is installed), hnsw, flat, ivf_flat, "
                             "ivfpq (compressed to fit --ann-budget-mb, re-ranked exactly from the stored rows), none")
    parser.add_argument("--ann-budget-mb", type=int_option("ann_budget_mb"), default=1024,
                        help="RAM for the served --faiss ivfpq index; the codes are chosen to fit (see cl2cm_hf.search.ann)")
    parser.add_argument("--no-query-encoder", action="store_true",
                        help="do not export the text tower to ONNX (a cl2cm-search call then loads torch and the checkpoint)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    engine = parser.add_argument_group("engine", "where the encoding runs: this process (or torchrun's), or a Ray Data job")
    engine.add_argument("--engine", default="local", choices=("local", "ray"),
                        help="local (default): this process; ray: actors on a Ray cluster, a killed worker's chunk redone "
                             "(pip install 'cl2cm-hf[ray]')")
    engine.add_argument("--ray-address", help="cluster to join: auto (the one `ray start` runs here), ray://HOST:10001; "
                                              "default: a local cluster of --ray-workers CPUs")
    engine.add_argument("--ray-workers", type=int_option("ray_workers"), help="encoding actors, each loading the checkpoint once (default 2)")
    engine.add_argument("--ray-retries", type=int_option("ray_retries"), help="times a worker may die and be restarted, its chunk redone (default 3)")
    engine.add_argument("--ray-gpus-per-worker", type=float, help="GPUs each actor reserves (default 0: CPU)")
    args = parser.parse_args(argv)
    ray_options = {"address": args.ray_address, "workers": args.ray_workers, "retries": args.ray_retries,
                   "gpus_per_worker": args.ray_gpus_per_worker}
    if args.engine != "ray" and any(value is not None for value in ray_options.values()):
        parser.error("the --ray-* options need --engine ray")

    def run() -> int:
        options = dict(images=args.images, features=args.features, batch_size=args.batch_size,
                       num_workers=args.num_workers, chunk_size=args.chunk_size, max_pixels=args.max_pixels,
                       faiss=args.faiss, device=args.device, progress=not args.no_progress, pictures=args.pictures,
                       compare=args.compare, overwrite=args.overwrite, videos=args.videos,
                       num_frames=args.num_frames, max_video_seconds=args.max_video_seconds,
                       ann_budget_mb=args.ann_budget_mb, query_encoder=not args.no_query_encoder)
        if args.engine == "local":
            return show(build_index(args.model, args.out, **options))
        from cl2cm_hf.search.ray_build import build_index_on_ray

        chosen = {name: value for name, value in ray_options.items() if value is not None}
        return show(build_index_on_ray(args.model, args.out, **chosen, **options))

    def show(report) -> int:
        if not report.metadata:
            return 0
        print(printable(report.summary()))
        for entry in report.skipped:
            print(f"  skipped {printable(entry['file'] or entry['id'])}: {entry['reason']}")
        if report.metadata.get("faiss"):
            info = report.metadata["faiss"]
            print(f"  faiss {info['type']}: recall@{info['recall_k']} {info['recall@10']:.3f} against exact search")
        encoder = report.metadata.get("query_encoder")
        if encoder:
            print(f"  query encoder (ONNX): within {encoder['max_abs_diff']:.1e} of the model on {encoder['probes']} probe queries"
                  if encoder["written"] else f"  no query encoder: {printable(encoder['reason'])}")
        if report.count == 0:
            print(f"cl2cm-index: error: nothing was indexed: all {len(report.skipped)} items were skipped "
                  f"(reasons above and in {printable(str(report.out / REPORT_FILE))})", file=sys.stderr)
            return 2
        return 0

    return run_tool("cl2cm-index", run)


if __name__ == "__main__":
    sys.exit(main())
