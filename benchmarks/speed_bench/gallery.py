"""Section `gallery`: exact top-k in a large gallery with `cl2cm_hf.retrieval.topk`: time, memory
beyond the gallery, the rate against this machine's torch matmul, and faiss `IndexFlatIP`."""

from __future__ import annotations

import gc
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.speed_bench.timing import PeakRSS, med, row


def matmul_gflops(queries: torch.Tensor, d: int, repeats: int) -> float:
    """This machine's float32 torch matmul throughput (GFLOP/s) for the queries against 65,536
    items: the best of one wide product (1000 x 65536 output) and 64 cache-sized ones (1000 x 1024,
    the shape of a search tile), median over `repeats`. The best of the two is the bar."""
    block = F.normalize(torch.randn(65536, d), dim=-1)
    wide = torch.empty(queries.shape[0], block.shape[0])
    tile = torch.empty(queries.shape[0], 1024)

    def tiles():
        for start in range(0, block.shape[0], 1024):
            torch.mm(queries, block[start : start + 1024].T, out=tile)

    best = 0.0
    for run in (lambda: torch.mm(queries, block.T, out=wide), tiles):
        run()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            rates.append(2.0 * queries.shape[0] * block.shape[0] * d / (time.perf_counter() - start) / 1e9)
        best = max(best, med(rates))
    return best


def bench_gallery(args) -> None:
    from cl2cm_hf.retrieval import topk

    n_query, n_gallery, d, k = (200, 100_000, 256, 10) if args.quick else (1000, 1_000_000, 256, 10)
    g = torch.Generator().manual_seed(1)
    gallery = torch.empty(n_gallery, d)
    for start in range(0, n_gallery, 100_000):
        stop = min(start + 100_000, n_gallery)
        gallery[start:stop] = F.normalize(torch.randn(stop - start, d, generator=g), dim=-1)
    near = gallery[torch.randint(0, n_gallery, (n_query,), generator=g)]  # each query near a gallery item
    queries = F.normalize(near + 0.5 * torch.randn(n_query, d, generator=g) / 16, dim=-1)
    flops = 2.0 * n_query * n_gallery * d
    repeats = 1 if args.quick else 2
    times, peaks, rates = [], [], []
    result = None
    rates.append(matmul_gflops(queries, d, repeats=2))
    for _ in range(repeats):  # the machine's matmul rate is measured before, between and after
        with PeakRSS() as peak:
            start = time.perf_counter()
            result = topk(queries, gallery, k)
            times.append(time.perf_counter() - start)
        peaks.append(peak.peak)
        rates.append(matmul_gflops(queries, d, repeats=2))
    achieved = flops / med(times) / 1e9
    machine = med(rates)
    fraction = achieved / machine
    gallery_gib = gallery.numel() * 4 / 2**30
    row("gallery", f"topk: {n_query:,} queries x {n_gallery:,} x {d} items, k={k}", f"{med(times):.2f} s",
        f"matmul {machine:.1f} GFLOP/s", fraction, ">= 50% of matmul GFLOP/s", fraction >= 0.5, args.threads,
        f"{achieved:.1f} GFLOP/s achieved")
    peak_gib = max(peaks) / 2**30
    row("gallery", "topk: peak memory beyond the gallery", f"{peak_gib * 1024:.0f} MiB",
        f"gallery {gallery_gib:.2f} GiB", peak_gib, "< 1 GiB", peak_gib < 1.0, args.threads, "RSS sampled every 2 ms")
    try:
        import faiss
    except ImportError:
        print("  [gallery] faiss not installed: no faiss row")
        return
    faiss.omp_set_num_threads(args.threads)
    with PeakRSS() as peak:
        start = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(gallery.numpy())
        build = time.perf_counter() - start
        search_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _, found = index.search(queries.numpy(), k)
            search_times.append(time.perf_counter() - start)
    same = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, result[1].numpy())]))
    row("gallery", "faiss IndexFlatIP (exact), same search", f"{med(search_times):.2f} s",
        f"topk {med(times):.2f} s", med(search_times) / med(times), None, None, args.threads,
        f"{flops / med(search_times) / 1e9:.1f} GFLOP/s; add {build:.1f} s; peak memory {peak.peak / 2**30:.2f} GiB "
        f"(the index holds its own copy of the gallery); top-10 overlap with topk {same:.4f}")
    del index, gallery
    gc.collect()
