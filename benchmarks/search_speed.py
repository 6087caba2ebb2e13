"""Search speed (issue 13, item 5): index throughput against the bare model forward, and one-query
latency on a large gallery, exact and HNSW. Writes benchmarks/results/search_speed.md.

    python benchmarks/search_speed.py                    # 1,000,000 x 256 gallery, every section
    python benchmarks/search_speed.py --only exact       # one section; the others stay as they were
    python benchmarks/search_speed.py --n 100000 --images 64 --out /tmp/s.md   # a smoke run
    python benchmarks/search_speed.py --only video --videos 8 --out /tmp/s.md   # a video smoke run

throughput  `build_index` on JPEG files (decoding and the processor in DataLoader workers, shards,
            the dataset written; model load included) vs `model.get_image_features` alone on the
            same batches already decoded; goal >= 0.8.
video       `build_index` on H.264 MP4 files (`load_video` decoding and frame sampling in DataLoader
            workers, the video processor, `get_video_features`) vs `model.get_video_features` alone on
            the same clips already decoded and processed; goal >= 0.8. Also the decoding rate of one
            worker alone: sampled frames and decoded frames per second (FFmpeg decodes every frame
            up to the last one sampled).
exact       one query at a time, k=10, on an (n, 256) L2-normalised gallery (a mixture of 1,000
            clusters, as embeddings are): exact `cl2cm_hf.retrieval.topk`, p50/p95, against the time
            to read the gallery once (a column sum); goal p50 <= 1.5x.
hnsw        the same queries with faiss HNSW (needs faiss; the build takes minutes): build time,
            p50/p95, recall@10 against exact.
scale       issue 24: `--scale-n` items (default 10,000,000) x 256 written as float16 shards, the exact
            top-10 of 1000 queries, the compressed IVF-PQ index (`cl2cm_hf.search.ann`) built from the
            shards, served memory-mapped: build time, bytes, RSS, p50/p95, recall@10; an extrapolation
            to 100M and 1B (`benchmarks/search_scale.py`; data under --scale-dir, reused by reruns).
build_memory  issue 24: peak RSS of `cl2cm-index --features` for each `--memory-n` rows of 64-d features,
            and one `cl2cm-search` call on the index (`benchmarks/search_build_memory.py`).
call        issue 24, item 5: one `cl2cm-search --exact` call on the `--call-n`-row index of build_memory, the
            code of `--call-before` against this tree, page cache cold and warm; the imports it needs;
            the loaded index's RSS, anonymous and file-backed, against its embeddings (`benchmarks/search_call.py`).

Each section is a block of the results file with its own command, commit, load and wall time, so a
section that was not rerun keeps the run it came from.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.provenance import git_commit, machine  # noqa: E402

SECTIONS = ("throughput", "video", "exact", "hnsw", "scale", "build_memory", "call")
_MARK = "<!-- section {}: written by benchmarks/search_speed.py -->"


def _checkpoint(folder: Path) -> Path:
    """A CL2CM checkpoint with a ViT-S/16-like vision tower (6 layers, 224 px), random weights."""
    from conftest import build_wordpiece_tokenizer, tiny_bert_config
    from transformers import ViTConfig, ViTImageProcessorPil

    from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel, build_processor

    vision = ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                       intermediate_size=1536)
    torch.manual_seed(0)
    config = CL2CMCrossModalConfig(text_config=tiny_bert_config().to_dict(), visual_encoder_type="backbone",
                                   vision_config=vision.to_dict(), projection_dim=256, visual_num_heads=2)
    CL2CMCrossModalModel(config).save_pretrained(folder)
    build_processor(build_wordpiece_tokenizer(), "", ViTImageProcessorPil(size={"height": 224, "width": 224})).save_pretrained(folder)
    return folder


def throughput(count: int, batch_size: int, workers: int) -> dict:
    from PIL import Image

    from cl2cm_hf.search import build_index, load_checkpoint, open_image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = _checkpoint(tmp / "model")
        (tmp / "photos").mkdir()
        rng = np.random.default_rng(0)
        for i in range(count):  # 640x480 photos-like JPEGs (smooth noise compresses like photos)
            small = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(tmp / "photos" / f"{i:05d}.jpg", quality=90)
        model, processor = load_checkpoint(model_dir)
        names = sorted(p.name for p in (tmp / "photos").iterdir())
        batches = [processor(images=[open_image(tmp / "photos" / n) for n in names[a : a + batch_size]], return_tensors="pt")
                   for a in range(0, count, batch_size)]
        with torch.no_grad():
            model.get_image_features(**batches[0])  # warm up
            start = time.perf_counter()
            for batch in batches:
                model.get_image_features(**batch)
            bare = time.perf_counter() - start
        start = time.perf_counter()
        build_index(model_dir, tmp / "index", images=tmp / "photos", batch_size=batch_size, num_workers=workers,
                    chunk_size=4 * batch_size, faiss="none", progress=False)
        indexed = time.perf_counter() - start
    return {"images": count, "batch_size": batch_size, "workers": workers, "bare_s": bare, "index_s": indexed,
            "bare_ips": count / bare, "index_ips": count / indexed, "ratio": bare / indexed}


def video_throughput(count: int, frames: int, batch_size: int, workers: int) -> dict:
    """Index `count` 640x360 MP4 clips of 2 s at 24 fps, sampling `frames` frames each."""
    sys.path.insert(0, str(REPO / "tests" / "search"))
    from PIL import Image
    from videos import write_video

    from cl2cm_hf.inference import embed_visual
    from cl2cm_hf.search import build_index, load_checkpoint
    from cl2cm_hf.search.decode_video import VideoSettings, open_video, probe_video, video_inputs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = _checkpoint(tmp / "model")
        (tmp / "clips").mkdir()
        rng = np.random.default_rng(0)
        for i in range(count):  # smooth noise drifting across the frame: compresses like footage
            small = rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)
            still = np.asarray(Image.fromarray(small).resize((700, 360), Image.BILINEAR))
            write_video(tmp / "clips" / f"{i:04d}.mp4", np.stack([still[:, t : t + 640] for t in range(48)]), fps=24)
        model, processor = load_checkpoint(model_dir)
        settings = VideoSettings(num_frames=frames)
        paths = sorted((tmp / "clips").iterdir())
        start = time.perf_counter()
        clips = [open_video(path, settings) for path in paths]
        decode_s = time.perf_counter() - start
        decoded = sum(frames_needed(probe_video(path).frames, frames) for path in paths)
        batches = [video_inputs(processor, clips[a : a + batch_size]) for a in range(0, count, batch_size)]
        with torch.no_grad():
            embed_visual(model, **batches[0])  # warm up
            start = time.perf_counter()
            for batch in batches:
                embed_visual(model, **batch)
            bare = time.perf_counter() - start
        start = time.perf_counter()
        build_index(model_dir, tmp / "index", videos=tmp / "clips", batch_size=batch_size, num_workers=workers,
                    chunk_size=4 * batch_size, faiss="none", progress=False, num_frames=frames)
        indexed = time.perf_counter() - start
    return {"videos": count, "frames": frames, "batch_size": batch_size, "workers": workers, "bare_s": bare,
            "index_s": indexed, "bare_vps": count / bare, "index_vps": count / indexed, "ratio": bare / indexed,
            "sampled_fps": count * frames / decode_s, "decoded_fps": decoded / decode_s}


def frames_needed(total: int, sampled: int) -> int:
    """Frames FFmpeg decodes to reach the last of `sampled` uniformly spread frames of `total`."""
    count = min(sampled, total)
    return (count - 1) * total // count + 1


def _gallery(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, d)).astype(np.float32)
    gallery = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for a in range(0, n, step):
        b = min(a + step, n)
        block = centers[rng.integers(0, 1000, b - a)] + 0.6 * rng.standard_normal((b - a, d)).astype(np.float32)
        gallery[a:b] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = centers[rng.integers(0, 1000, 200)] + 0.6 * rng.standard_normal((200, d)).astype(np.float32)
    return gallery, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]


def exact(gallery: np.ndarray, queries: np.ndarray, repeats: int) -> dict:
    from cl2cm_hf.retrieval import topk

    tensor = torch.from_numpy(gallery)
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        tensor.sum(dim=0)
        reads.append(time.perf_counter() - start)
    topk(queries[:1], gallery, 10)  # warm up
    times = []
    for q in queries[:repeats]:
        start = time.perf_counter()
        topk(q[None], gallery, 10)
        times.append(time.perf_counter() - start)
    return {"read_once_s": min(reads), "exact": _percentiles(times)}


def hnsw(gallery: np.ndarray, queries: np.ndarray, repeats: int) -> dict:
    from cl2cm_hf.retrieval import build_faiss_index, faiss_recall_at_k, faiss_search

    start = time.perf_counter()
    index = build_faiss_index(gallery, "hnsw", hnsw_m=32, ef_construction=40, ef_search=128)
    build_s = time.perf_counter() - start
    faiss_search(index, queries[:1], 10)
    times = []
    for q in queries[:repeats]:
        start = time.perf_counter()
        faiss_search(index, q[None], 10)
        times.append(time.perf_counter() - start)
    return {"build_s": build_s, "hnsw": _percentiles(times), "recall@10": faiss_recall_at_k(index, queries, gallery, k=10)}


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _report(name: str, r: dict, args) -> list[str]:
    if name == "throughput":
        return [
            "## Index throughput vs the bare model forward (goal >= 0.8)", "",
            "| images | batch | decode workers | bare forward | build_index (all in) | ratio |", "|---|---|---|---|---|---|",
            f"| {r['images']} 640x480 JPEG | {r['batch_size']} | {r['workers']} | {r['bare_ips']:.1f} img/s | "
            f"{r['index_ips']:.1f} img/s | **{r['ratio']:.2f}** |", "",
            "Model: CL2CM with a ViT (6 layers, width 384, 224 px, patch 16; random weights). `build_index` time includes "
            "loading the checkpoint, listing and stat-ing the files, decoding + processor in the DataLoader worker(s), the "
            "shards and writing the dataset; the bare forward is `get_image_features` on the same batches already made.",
        ]
    if name == "video":
        return [
            "## Video index throughput vs the bare model forward (goal >= 0.8)", "",
            "| videos | frames sampled | batch | decode workers | bare forward | build_index (all in) | ratio |",
            "|---|---|---|---|---|---|---|",
            f"| {r['videos']} MP4 (H.264, 640x360, 2 s at 24 fps) | {r['frames']} | {r['batch_size']} | {r['workers']} | "
            f"{r['bare_vps']:.2f} videos/s | {r['index_vps']:.2f} videos/s | **{r['ratio']:.2f}** |", "",
            f"Decoding alone, one process (one worker's rate): {r['sampled_fps']:.0f} sampled frames/s "
            f"({r['decoded_fps']:.0f} frames decoded/s: FFmpeg decodes every frame up to the last one sampled).", "",
            "Model: the throughput section's (ViT, 6 layers, width 384, 224 px; random weights), frames pooled by masked "
            "mean. `build_index --videos` time includes loading the checkpoint, listing the files, probing, decoding and "
            "sampling with `load_video` and the video processor in the DataLoader worker(s), the shards and the dataset; "
            "the bare forward is `get_video_features` on the same clips already decoded and processed.",
        ]
    size = f"{args.n:,} x {args.d} gallery, k=10 ({args.repeats} queries, one at a time)"
    if name == "exact":
        ratio = r["exact"][0] / r["read_once_s"]
        return [
            f"## Exact one-query latency, {size}", "",
            "| search | p50 | p95 | read the gallery once (column sum, best of 5) | p50 / read-once |", "|---|---|---|---|---|",
            f"| exact `topk` | {_ms(r['exact'][0])} | {_ms(r['exact'][1])} | {_ms(r['read_once_s'])} | **{ratio:.2f}x** |", "",
            f"Goal: p50 <= 1.5x the read-once time: {'met' if ratio <= 1.5 else 'not met'}.",
        ]
    return [
        f"## HNSW one-query latency, {size}", "",
        "| search | build | p50 | p95 | recall@10 vs exact |", "|---|---|---|---|---|",
        f"| faiss HNSW (M=32, efConstruction=40, efSearch=128) | {r['build_s']:.0f} s | {_ms(r['hnsw'][0])} | "
        f"{_ms(r['hnsw'][1])} | {r['recall@10']:.3f} |",
    ]


def _scale_block(name: str, args, command: str, commit: str, load: float, started: float) -> str:
    """The issue-24 sections, in their own modules: scale (`search_scale`, one run per ``--scale-n``),
    build_memory (`search_build_memory`, one build per ``--memory-n``) and call (`search_call`)."""
    from benchmarks import search_build_memory, search_call, search_scale

    def log(message):
        print(f"{name} {time.perf_counter() - started:.0f}s {message}", flush=True)

    if name == "scale":
        lines = search_scale.report([search_scale.scale(Path(args.scale_dir), n, args.d, log=log) for n in args.scale_n])
    elif name == "build_memory":
        lines = search_build_memory.report(search_build_memory.build_memory(Path(args.scale_dir) / "memory", args.memory_n, log=log))
    else:
        lines = search_call.report(search_call.call(Path(args.scale_dir) / "memory", args.call_n, args.call_before,
                                                    args.call_repeats, log=log))
    return "\n".join([_MARK.format(name), *lines, "",
                      f"Run: `{command.strip()}` at commit {commit}; {machine(torch)}; load average (1 min) at start "
                      f"{load:.2f}, at end {os.getloadavg()[0]:.2f}; section wall time {time.perf_counter() - started:.0f} s"
                      f"{' (data and exact answer included when not cached)' if name == 'scale' else ''}; process niceness "
                      f"{os.nice(0)}."])


def _old_sections(path: Path) -> dict[str, str]:
    """The blocks of an earlier results file, by section name."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    marks = [(m.start(), m.group(1)) for m in re.finditer(r"<!-- section (\w+): ", text)]
    return {name: text[a : (marks[i + 1][0] if i + 1 < len(marks) else len(text))].rstrip("\n")
            for i, (a, name) in enumerate(marks)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to measure; the others are kept from the existing --out file")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per video")
    parser.add_argument("--video-batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--scale-n", type=int, nargs="+", default=[10_000_000], help="scale section: item counts, in order")
    parser.add_argument("--memory-n", type=int, nargs="+", default=[1_000_000, 2_000_000], help="build_memory section: rows")
    parser.add_argument("--call-n", type=int, default=1_000_000, help="call section: rows of the index searched")
    parser.add_argument("--call-before", default="79b4f09", help="call section: the commit whose code is measured as 'before'")
    parser.add_argument("--call-repeats", type=int, default=3, help="call section: rounds of (before, after) calls")
    parser.add_argument("--scale-dir", default="/tmp/cl2cm-scale", help="scale section: where the shards and indexes go")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_speed.md"))
    args = parser.parse_args(argv)
    command = "python benchmarks/search_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = git_commit(short=True)
    blocks = _old_sections(Path(args.out))
    gallery = queries = None
    for name in (s for s in SECTIONS if s in args.only):
        if name == "hnsw":
            try:
                import faiss  # noqa: F401
            except ImportError:
                print("hnsw: faiss is not importable, section skipped", flush=True)
                continue
        load, started = os.getloadavg()[0], time.perf_counter()
        if name in ("scale", "build_memory", "call"):
            blocks[name] = _scale_block(name, args, command, commit, load, started)
            continue
        if name == "throughput":
            result = throughput(args.images, args.batch_size, args.workers)
        elif name == "video":
            result = video_throughput(args.videos, args.frames, args.video_batch_size, args.workers)
        else:
            if gallery is None:
                gallery, queries = _gallery(args.n, args.d)
            result = (exact if name == "exact" else hnsw)(gallery, queries, args.repeats)
        wall = time.perf_counter() - started
        print(name, result, flush=True)
        blocks[name] = "\n".join([
            _MARK.format(name), *_report(name, result, args), "",
            f"Run: `{command.strip()}` at commit {commit}; {machine(torch)}; load average (1 min) at start "
            f"{load:.2f}, at end {os.getloadavg()[0]:.2f}; section wall time {wall:.0f} s.",
        ])
    lines = ["# Search speed", "", "Written by `benchmarks/search_speed.py` (issue 13, item 5), one block per section; a "
             "block not rerun keeps the run it came from (its own command, commit and load). A shared 2-core CPU box: "
             "absolute numbers are noisy.", ""]
    for name in SECTIONS:
        lines += [blocks.get(name, f"{_MARK.format(name)}\n(not measured yet)"), ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
