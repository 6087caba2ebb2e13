"""Search speed (issue 13, item 5): index throughput against the bare model forward, and one-query
latency on a large gallery, exact and HNSW. Writes benchmarks/results/search_speed.md.

    python benchmarks/search_speed.py                    # 1,000,000 x 256 gallery
    python benchmarks/search_speed.py --n 100000 --images 64   # a smoke run

throughput  `build_index` on JPEG files (decoding and the processor in DataLoader workers, shards,
            the dataset written; model load included) vs `model.get_visual_features` alone on the
            same batches already decoded; goal >= 0.8.
latency     one query at a time, k=10, on an (n, 256) L2-normalised gallery (a mixture of 1,000
            clusters, as embeddings are): exact `cl2cm_hf.retrieval.topk` and faiss HNSW (when
            importable), p50/p95, HNSW recall@10 against exact; the exact p50 against the time to
            read the gallery once (a column sum); goal <= 1.5x.
"""

from __future__ import annotations

import argparse
import platform
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
            model.get_visual_features(**batches[0])  # warm up
            start = time.perf_counter()
            for batch in batches:
                model.get_visual_features(**batch)
            bare = time.perf_counter() - start
        start = time.perf_counter()
        build_index(model_dir, tmp / "index", images=tmp / "photos", batch_size=batch_size, num_workers=workers,
                    chunk_size=4 * batch_size, faiss="none", progress=False)
        indexed = time.perf_counter() - start
    return {"images": count, "batch_size": batch_size, "workers": workers, "bare_s": bare, "index_s": indexed,
            "bare_ips": count / bare, "index_ips": count / indexed, "ratio": bare / indexed}


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


def latency(n: int, d: int, repeats: int) -> dict:
    from cl2cm_hf.retrieval import build_faiss_index, faiss_recall_at_k, faiss_search, topk

    gallery, queries = _gallery(n, d)
    tensor = torch.from_numpy(gallery)
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        tensor.sum(dim=0)
        reads.append(time.perf_counter() - start)
    read_once = min(reads)
    topk(queries[:1], gallery, 10)  # warm up
    exact = []
    for q in queries[:repeats]:
        start = time.perf_counter()
        topk(q[None], gallery, 10)
        exact.append(time.perf_counter() - start)
    row = {"n": n, "d": d, "repeats": repeats, "read_once_s": read_once, "exact": _percentiles(exact)}
    try:
        import faiss  # noqa: F401
    except ImportError:
        return row
    start = time.perf_counter()
    index = build_faiss_index(gallery, "hnsw", hnsw_m=32, ef_construction=40, ef_search=128)
    row["hnsw_build_s"] = time.perf_counter() - start
    faiss_search(index, queries[:1], 10)
    approx = []
    for q in queries[:repeats]:
        start = time.perf_counter()
        faiss_search(index, q[None], 10)
        approx.append(time.perf_counter() - start)
    row["hnsw"] = _percentiles(approx)
    row["hnsw_recall@10"] = faiss_recall_at_k(index, queries, gallery, k=10)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_speed.md"))
    args = parser.parse_args(argv)
    command = "python benchmarks/search_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t = throughput(args.images, args.batch_size, args.workers)
    print(t, flush=True)
    lat = latency(args.n, args.d, args.repeats)
    print(lat, flush=True)
    ms = lambda s: f"{1000 * s:.1f} ms"  # noqa: E731
    lines = [
        "# Search speed", "", f"Command: `{command.strip()}`", "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()} (a shared 2-core CPU box: absolute numbers are noisy).", "",
        "## Index throughput vs the bare model forward (goal >= 0.8)", "",
        "| images | batch | decode workers | bare forward | build_index (all in) | ratio |", "|---|---|---|---|---|---|",
        f"| {t['images']} 640x480 JPEG | {t['batch_size']} | {t['workers']} | {t['bare_ips']:.1f} img/s | "
        f"{t['index_ips']:.1f} img/s | **{t['ratio']:.2f}** |", "",
        "Model: CL2CM with a ViT (6 layers, width 384, 224 px, patch 16; random weights). `build_index` time includes "
        "loading the checkpoint, listing and stat-ing the files, decoding + processor in the DataLoader worker(s), the "
        "shards and writing the dataset; the bare forward is `get_visual_features` on the same batches already made.", "",
        f"## One-query latency, {lat['n']:,} x {lat['d']} gallery, k=10 ({lat['repeats']} queries)", "",
        "| search | p50 | p95 | recall@10 vs exact |", "|---|---|---|---|",
        f"| exact `topk` | {ms(lat['exact'][0])} | {ms(lat['exact'][1])} | 1 |",
    ]
    if "hnsw" in lat:
        lines.append(f"| faiss HNSW (M=32, efConstruction=40, efSearch=128) | {ms(lat['hnsw'][0])} | {ms(lat['hnsw'][1])} | "
                     f"{lat['hnsw_recall@10']:.3f} |")
    lines += ["", f"Reading the gallery once (a column sum, best of 5): {ms(lat['read_once_s'])}; exact p50 / read-once = "
              f"**{lat['exact'][0] / lat['read_once_s']:.2f}x** (goal <= 1.5x)."]
    if "hnsw_build_s" in lat:
        lines.append(f"HNSW build: {lat['hnsw_build_s']:.0f} s.")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
