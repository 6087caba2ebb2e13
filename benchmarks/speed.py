"""Speed benchmarks against references, each comparison measured side by side in one run.

    python benchmarks/speed.py                       # everything, writes benchmarks/results/speed.md
    python benchmarks/speed.py --only ot,eval        # some sections (ot, eval, gallery, step, encode, neighbour)
    python benchmarks/speed.py --only neighbour      # rewrites only the page's neighbour block
    python benchmarks/speed.py --quick               # smaller sizes, fewer repeats (a smoke run)

Every comparison runs its contenders interleaved (the order rotates each repeat) and reports the
median over repeats of the per-repeat ratio, so a shared machine's load drift hits both sides
alike. Torch threads are set explicitly (``--threads``, default: all cores) and reported per row;
the OT rows also run at 1 thread, the setting at which the single-threaded POT loop is compared.

Sections:
  ot       `sinkhorn_ot_loss` (batched) vs a loop of POT `ot.sinkhorn` over the pairs, same epsilon,
           same iterations (stopThr=0), same value (asserted within 1e-4).
  eval     `retrieval_metrics` vs the similarity matmul alone and vs NRCCR's evaluation (numpy
           argsort of every query's full score row, Python loops; identical metrics asserted).
  gallery  exact top-10 of 1,000 queries in 1,000,000 x 256 items with `cl2cm_hf.retrieval.topk`:
           time, memory beyond the gallery, GFLOP/s vs this machine's torch matmul; faiss IndexFlatIP.
  step     a stage-2 training step of CL2CM vs a plain dual encoder (same towers, same batch).
  encode   text embedding throughput of `cl2cm_hf.inference.encode_texts`, length-sorted vs fixed padding.
  neighbour  the CPU thread policy next to one busy process vs alone: a demo-size stage-2 step under the
           chosen policy, the old default and 1 thread (each in its own process), and the wall time of a
           shrunk `make demo` (`--full-demo`: the full one) under the chosen policy and the old default.
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from benchmarks.provenance import cores, cpu_model, git_commit  # noqa: E402
from cl2cm_hf.losses import sinkhorn_ot_loss, sinkhorn_plan  # noqa: E402

ROWS: list[dict] = []  # every result row, in order


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def interleaved(contenders: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, `repeats` times, interleaved (rotating order)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def med(values: list[float]) -> float:
    return statistics.median(values)


def row(section: str, what: str, measured: str, reference: str, ratio: float, goal: str | None,
        met: bool | None, threads: int, note: str = "") -> None:
    entry = dict(section=section, what=what, measured=measured, reference=reference, ratio=ratio, goal=goal or "-",
                 met="-" if met is None else ("yes" if met else "**no**"), threads=threads, note=note)
    ROWS.append(entry)
    print(f"  [{section}] {what}: {measured} | ref {reference} | ratio {ratio:.3g} | goal {goal or '-'} "
          f"| met {entry['met']} | threads {threads}" + (f" | {note}" if note else ""), flush=True)


class PeakRSS:
    """Peak resident memory of this process above its level at `__enter__`, sampled every 2 ms."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss - self.base)
            time.sleep(0.002)

    def __enter__(self):
        gc.collect()
        self.base = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss - self.base)


# ---------------------------------------------------------------------------------------------
# 1. Sinkhorn OT vs POT
# ---------------------------------------------------------------------------------------------


def pot_ot_loss(x: np.ndarray, x_len, y: np.ndarray, y_len, epsilon: float, n_iter: int, costs=None) -> float:
    """The reference: a Python loop of POT `ot.sinkhorn` over the pairs, as in tests/test_losses.py
    (normalise the unpadded tokens, C = 1 - cos, the plan, <P, C>; mean over pairs). With `costs`
    the per-pair cost matrices are given (plan-only timing)."""
    import ot

    total = 0.0
    for i in range(len(x_len)):
        if costs is None:
            xi, yi = x[i, : x_len[i]], y[i, : y_len[i]]
            xi = xi / np.linalg.norm(xi, axis=1, keepdims=True)
            yi = yi / np.linalg.norm(yi, axis=1, keepdims=True)
            cost = 1.0 - xi @ yi.T
        else:
            cost = costs[i]
        a = np.full(cost.shape[0], 1.0 / cost.shape[0])
        b = np.full(cost.shape[1], 1.0 / cost.shape[1])
        plan = ot.sinkhorn(a, b, cost, epsilon, numItermax=n_iter, stopThr=0.0, warn=False)
        total += float((plan * cost).sum())
    return total / len(x_len)


def bench_ot(args) -> None:
    pairs, n, d, n_iter = (32, 32, 256, 50) if args.quick else (128, 32, 256, 50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(pairs, n, d, generator=g)
    y = torch.randn(pairs, n, d, generator=g)
    mask = torch.ones(pairs, n)
    lengths = [n] * pairs
    x64, y64 = x.double().numpy(), y.double().numpy()
    xn, yn = F.normalize(x.double(), dim=-1).numpy(), F.normalize(y.double(), dim=-1).numpy()
    costs = [1.0 - xn[i] @ yn[i].T for i in range(pairs)]
    cost_t = torch.stack([torch.from_numpy(c) for c in costs]).float()
    a = mask / n
    warnings.simplefilter("ignore")
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        for epsilon in (0.1, 0.05):
            with torch.no_grad():
                ours = float(sinkhorn_ot_loss(x, mask, y, mask, epsilon=epsilon, n_iter=n_iter))
            want = pot_ot_loss(x64, lengths, y64, lengths, epsilon, n_iter)
            assert abs(ours - want) < 1e-4, (epsilon, ours, want)
            times = interleaved(
                {
                    "ours": lambda: sinkhorn_ot_loss(x, mask, y, mask, epsilon=epsilon, n_iter=n_iter),
                    "pot": lambda: pot_ot_loss(x64, lengths, y64, lengths, epsilon, n_iter),
                    "ours_plan": lambda: sinkhorn_plan(cost_t, a, a, epsilon, n_iter),
                    "pot_plan": lambda: pot_ot_loss(None, lengths, None, lengths, epsilon, n_iter, costs=costs),
                },
                repeats=args.repeats,
            )
            speedup = median_ratio(times["pot"], times["ours"])
            row("ot", f"OT loss, {pairs} pairs {n}x{n} tokens (d={d}), eps {epsilon}, {n_iter} iterations",
                f"{med(times['ours']) * 1e3:.1f} ms", f"POT loop {med(times['pot']) * 1e3:.0f} ms", speedup,
                ">= 20x faster" if threads == 1 else None, speedup >= 20 if threads == 1 else None, threads,
                f"abs(loss - POT) = {abs(ours - want):.1e}")
            plan_speedup = median_ratio(times["pot_plan"], times["ours_plan"])
            row("ot", f"plan only (costs given), eps {epsilon}", f"{med(times['ours_plan']) * 1e3:.1f} ms",
                f"POT loop {med(times['pot_plan']) * 1e3:.0f} ms", plan_speedup, None, None, threads)
    torch.set_num_threads(args.threads)


# ---------------------------------------------------------------------------------------------
# 2. Evaluation vs the matmul alone and vs NRCCR's evaluation
# ---------------------------------------------------------------------------------------------


def nrccr_metrics(captions: np.ndarray, items: np.ndarray, n_caption: int) -> dict:
    """NRCCR's evaluation (evaluation.py `cal_error` + the `t2v`/`v2t` of its metric module):
    float64 embeddings, the full (captions x items) error matrix, one numpy argsort per query in a
    Python loop. Caption i belongs to item i // n_caption."""

    def l2norm(x):
        return 1.0 * x / np.linalg.norm(x, axis=1, keepdims=True)

    c2i = -1 * np.dot(l2norm(captions), l2norm(items).T)

    def summary(ranks):
        r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
        r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
        r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
        return [r1, r5, r10, np.floor(np.median(ranks)) + 1, ranks.mean() + 1]

    t2v_ranks = np.zeros(c2i.shape[0])
    for i in range(len(t2v_ranks)):
        inds = np.argsort(c2i[i])
        t2v_ranks[i] = np.where(inds == i // n_caption)[0][0]
    v2t_ranks = np.zeros(c2i.shape[1])
    for i in range(len(v2t_ranks)):
        inds = np.argsort(c2i[:, i])
        v2t_ranks[i] = np.where(inds // n_caption == i)[0][0]
    keys = ["r1", "r5", "r10", "medr", "mnr"]
    out = {f"t2v_{k}": float(v) for k, v in zip(keys, summary(t2v_ranks))}
    out.update({f"v2t_{k}": float(v) for k, v in zip(keys, summary(v2t_ranks))})
    out["sumr"] = sum(out[f"{s}_r{k}"] for s in ("t2v", "v2t") for k in (1, 5, 10))
    return out


def eval_embeddings(items: int, per_item: int, d: int, seed: int):
    """L2-normalised item embeddings and `per_item` noisy captions per item (R@1 well below 100)."""
    g = torch.Generator().manual_seed(seed)
    visual = F.normalize(torch.randn(items, d, generator=g), dim=-1)
    text_to_visual = torch.arange(items).repeat_interleave(per_item)
    noise = 5.0 * torch.randn(items * per_item, d, generator=g) / math.sqrt(d)
    text = F.normalize(visual[text_to_visual] + noise, dim=-1)
    return text, visual, text_to_visual


def bench_eval(args) -> None:
    from cl2cm_hf.retrieval import retrieval_metrics

    d, per_item = 256, 5
    sizes = [(200, 3)] if args.quick else [(1000, args.repeats), (5000, 3)]
    for items, repeats in sizes:
        text, visual, text_to_visual = eval_embeddings(items, per_item, d, seed=items)
        t64, v64 = text.double().numpy(), visual.double().numpy()
        ours = retrieval_metrics(text, visual, text_to_visual)
        reference = nrccr_metrics(t64, v64, per_item)
        assert ours.keys() == reference.keys()
        for key in ours:
            assert math.isclose(ours[key], reference[key], rel_tol=1e-12, abs_tol=1e-9), (key, ours[key], reference[key])
        scores = torch.empty(text.shape[0], visual.shape[0])  # the matmul alone: no allocation either
        contenders = {
            "matmul": lambda: torch.mm(text, visual.T, out=scores),
            "matmul_alloc": lambda: text @ visual.T,
            "ours": lambda: retrieval_metrics(text, visual, text_to_visual),
            "nrccr": lambda: nrccr_metrics(t64, v64, per_item),
        }
        contenders["matmul"](), contenders["matmul_alloc"]()  # the others ran above (the metrics check): warm
        times = interleaved(contenders, repeats=repeats, warmup=0)
        over_matmul = median_ratio(times["ours"], times["matmul"])
        size = f"{items * per_item:,} captions x {items:,} items (d={d})"
        row("eval", f"retrieval_metrics, {size}", f"{med(times['ours']) * 1e3:.0f} ms",
            f"matmul alone {med(times['matmul']) * 1e3:.0f} ms", over_matmul, "<= 1.5x the matmul",
            over_matmul <= 1.5, args.threads,
            f"matmul into a preallocated output; with a fresh output (`t @ v.T`, page faults included) "
            f"{med(times['matmul_alloc']) * 1e3:.0f} ms, ratio {median_ratio(times['ours'], times['matmul_alloc']):.2f}; "
            f"R@1 t2v {ours['t2v_r1']:.1f}; metrics identical to NRCCR's")
        speedup = median_ratio(times["nrccr"], times["ours"])
        row("eval", f"NRCCR-style evaluation / retrieval_metrics, {size}", f"{med(times['ours']) * 1e3:.0f} ms",
            f"NRCCR {med(times['nrccr']) * 1e3:.0f} ms", speedup, None, None, args.threads, "speed-up over NRCCR")
        del t64, v64, contenders, scores
        gc.collect()


# ---------------------------------------------------------------------------------------------
# 3. Large gallery: exact top-10 in 1M x 256
# ---------------------------------------------------------------------------------------------


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
    queries = F.normalize(gallery[torch.randint(0, n_gallery, (n_query,), generator=g)] + 0.5 * torch.randn(n_query, d, generator=g) / 16, dim=-1)
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


# ---------------------------------------------------------------------------------------------
# 4. Stage-2 training step: CL2CM vs a plain dual encoder
# ---------------------------------------------------------------------------------------------


STEP_SIZES = {
    # name: (vocab, hidden, layers, heads, projection, feature_dim, visual_hidden, batch, max_tokens)
    "demo recipe towers (BERT 96x2, batch 64)": (1500, 96, 2, 4, 64, 64, 128, 64, 40),
    "MiniLM-size towers (BERT 384x6, batch 32)": (30522, 384, 6, 12, 256, 2048, 512, 32, 32),
}
STEP_REPEATS = {"demo recipe towers (BERT 96x2, batch 64)": 9, "MiniLM-size towers (BERT 384x6, batch 32)": 5}


def stage2_case(name: str):
    """Random towers of size `name` (STEP_SIZES) and one batch: (teacher, student, inputs, precomputed
    teacher embeddings)."""
    from transformers import BertConfig

    from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

    vocab, hidden, layers, heads, proj, feat, vhidden, batch, max_tokens = STEP_SIZES[name]
    torch.manual_seed(0)
    text = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=max(64, max_tokens + 2)).to_dict()
    teacher = CL2CMCrossLingualModel(CL2CMCrossLingualConfig(text_config=text, projection_dim=proj))
    student = CL2CMCrossModalModel(CL2CMCrossModalConfig(
        text_config=text, projection_dim=proj, visual_feature_dim=feat, visual_hidden_size=vhidden))
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for side in ("source", "target"):
        lengths = torch.randint(max_tokens // 3, max_tokens + 1, (batch,), generator=g)
        width = int(lengths.max())
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        inputs[f"{side}_input_ids"] = torch.randint(5, vocab, (batch, width), generator=g) * mask
        inputs[f"{side}_attention_mask"] = mask
    inputs["visual_features"] = torch.randn(batch, feat, generator=g)
    with torch.no_grad():
        teacher.eval()
        precomputed = {
            "teacher_source_embeds": teacher.get_text_features(inputs["source_input_ids"], inputs["source_attention_mask"]).pooler_output,
            "teacher_target_embeds": teacher.get_text_features(inputs["target_input_ids"], inputs["target_attention_mask"], language="target").pooler_output,
        }
    return teacher, student, inputs, precomputed


def stage2_step(student, lambda_kt, teacher_model=None, teacher_scale=None):
    """One CrossModalTrainer step on a copy of `student`: loss, backward, AdamW step."""
    from transformers import TrainingArguments

    from cl2cm_hf.training.arguments import CL2CMArguments
    from cl2cm_hf.training.trainers import CrossModalTrainer

    model = copy.deepcopy(student).train()
    targs = TrainingArguments(output_dir=str(REPO / "runs" / ".speed-bench"), use_cpu=True, report_to="none")
    trainer = CrossModalTrainer(
        model=model, args=targs, cl2cm_args=CL2CMArguments(stage="cm", lambda_kt=lambda_kt),
        teacher_model=teacher_model, teacher_scale=teacher_scale,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_step(args) -> None:
    sizes = dict(list(STEP_SIZES.items())[:1]) if args.quick else STEP_SIZES
    for name in sizes:
        teacher, student, inputs, precomputed = stage2_case(name)
        plain = stage2_step(student, 0.0)
        live = stage2_step(student, 1.0, teacher_model=copy.deepcopy(teacher))
        pre = stage2_step(student, 1.0, teacher_scale=float(teacher.scale().detach()))
        with_teacher = {**inputs, **precomputed}
        times = interleaved(
            {"plain": lambda: plain(inputs), "live": lambda: live(inputs), "precomputed": lambda: pre(with_teacher)},
            repeats=3 if args.quick else max(args.repeats, STEP_REPEATS[name]), warmup=1,
        )
        live_ratio = median_ratio(times["live"], times["plain"])
        pre_ratio = median_ratio(times["precomputed"], times["plain"])
        plain_ms = f"plain {med(times['plain']) * 1e3:.0f} ms"
        row("step", f"{name}: CL2CM, live teacher / plain", f"{med(times['live']) * 1e3:.0f} ms", plain_ms, live_ratio,
            "<= 1.35x", live_ratio <= 1.35, args.threads)
        row("step", f"{name}: CL2CM, precomputed teacher / plain", f"{med(times['precomputed']) * 1e3:.0f} ms", plain_ms,
            pre_ratio, "<= 1.05x", pre_ratio <= 1.05, args.threads)


# ---------------------------------------------------------------------------------------------
# 5. Text embedding throughput: length-sorted vs fixed-padding batches
# ---------------------------------------------------------------------------------------------


def _multi30k_captions(limit: int) -> list[str] | None:
    path = SHARED / "data" / "multi30k" / "task1" / "raw" / "train.de.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.strip() for _, line in zip(range(limit), handle) if line.strip()]


def bench_encode(args) -> None:
    from transformers import BertConfig, BertTokenizerFast

    from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel
    from cl2cm_hf.data import build_demo_world, train_demo_tokenizer
    from cl2cm_hf.evaluation.encoding import as_processor, encode_texts

    count = 1000 if args.quick else 5000
    cases = []
    world = build_demo_world(seed=0, num_items=1500)
    demo_tok = train_demo_tokenizer(world.tokenizer_corpus(), vocab_size=1500)
    demo_texts = list(world.pairs["train"]["target_text"])[:count]
    cases.append(("demo world captions, demo tokenizer, max_length 40", demo_tok, demo_texts, 40))
    captions = _multi30k_captions(count)
    mbert = SHARED / "tokenizers" / "bert-base-multilingual-cased"
    if captions is not None and mbert.is_dir():
        tokenizer = BertTokenizerFast(tokenizer_file=str(mbert / "tokenizer.json"), vocab_file=str(mbert / "vocab.txt"),
                                      do_lower_case=False)
        cases.append(("Multi30K German captions, mBERT tokenizer, max_length 64", tokenizer, captions, 64))
    else:
        print("  [encode] ../shared is absent: no Multi30K row")
    for name, tokenizer, texts, max_length in cases:
        torch.manual_seed(0)
        text = BertConfig(vocab_size=len(tokenizer), hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=384, max_position_embeddings=max(64, max_length + 2)).to_dict()
        model = CL2CMCrossModalModel(CL2CMCrossModalConfig(text_config=text, projection_dim=64, visual_feature_dim=64)).eval()

        def encoder(sort):
            return lambda: encode_texts(model.get_text_features, as_processor(tokenizer), texts, batch_size=256,
                                        max_length=max_length, sort_by_length=sort)

        sorted_out, fixed_out = encoder(True)(), encoder(False)()  # also the warm-up
        assert torch.allclose(sorted_out, fixed_out, atol=1e-4), float((sorted_out - fixed_out).abs().max())
        times = interleaved({"sorted": encoder(True), "fixed": encoder(False)}, repeats=min(args.repeats, 3), warmup=0)
        speedup = median_ratio(times["fixed"], times["sorted"])
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        row("encode", f"encode_texts, {len(texts):,} {name} (text tower 96x2, batch 256)",
            f"{len(texts) / med(times['sorted']):,.0f} texts/s", f"fixed padding {len(texts) / med(times['fixed']):,.0f} texts/s",
            speedup, None, None, args.threads, f"mean length {np.mean(lengths):.1f} tokens of {max_length}; same embeddings")


# ---------------------------------------------------------------------------------------------
# 6. Next to a busy process: the CPU thread policy
# ---------------------------------------------------------------------------------------------

DEMO_STEP = "demo recipe towers (BERT 96x2, batch 64)"
# name: (OMP_WAIT_POLICY, cpu_threads). OMP_WAIT_POLICY is read once when torch starts OpenMP, so each
# policy runs in its own process; None leaves the variable unset (libgomp spins before it sleeps).
POLICIES = {
    "chosen (trainer/run.py): cpu_threads auto, OMP_WAIT_POLICY=PASSIVE": ("PASSIVE", "auto"),
    "old default: cpu_threads auto, no passive wait": (None, "auto"),
    "cpu_threads 1, OMP_WAIT_POLICY=PASSIVE": ("PASSIVE", "1"),
}
SHRUNK_DEMO = ["--demo_items", "128", "--demo_validation_items", "32", "--demo_test_items", "32", "--text_num_layers", "1",
               "--cl_num_train_epochs", "1", "--num_train_epochs", "1"]
# The old default's demo: the library's `main` without trainer/run.py's set-up (what `cl2cm-train` runs).
LIBRARY_MAIN = "import sys; from cl2cm_hf.training.run import main; sys.exit(main(sys.argv[1:]))"


def policy_env(wait_policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"})
    return env if wait_policy is None else {**env, "OMP_WAIT_POLICY": wait_policy}


def set_neighbour(pid: int, busy: bool) -> None:
    """Let the neighbour spin (SIGCONT) or stop it (SIGSTOP); then give the scheduler a moment."""
    os.kill(pid, signal.SIGCONT if busy else signal.SIGSTOP)
    time.sleep(0.3)


def neighbour_worker(pid: int, setting: str, repeats: int) -> None:
    """In a process started with the policy's environment: the demo-size stage-2 step (live teacher,
    as in the demo recipe) alone and next to the busy neighbour `pid`, interleaved; one JSON line."""
    import json

    from cl2cm_hf.torch_state import cpu_threads, torch_threads

    with torch_threads(cpu_threads(setting)):
        teacher, student, inputs, _ = stage2_case(DEMO_STEP)
        step = stage2_step(student, 1.0, teacher_model=teacher)
        set_neighbour(pid, False)
        step(inputs)  # warm-up
        times = {"alone": [], "busy": []}
        for r in range(repeats):
            for condition in (("alone", "busy") if r % 2 == 0 else ("busy", "alone")):
                set_neighbour(pid, condition == "busy")
                start = time.perf_counter()
                step(inputs)
                times[condition].append(time.perf_counter() - start)
        set_neighbour(pid, False)
        print(json.dumps({"threads": torch.get_num_threads(), **times}), flush=True)


def bench_neighbour(args) -> None:
    """Each policy's demo-size stage-2 step and shrunk (or full) `make demo` run, alone and next to one
    busy process (a Python loop on one core, stopped with SIGSTOP while "alone")."""
    import json
    import subprocess

    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    auto_threads = None
    try:
        set_neighbour(neighbour.pid, False)
        repeats = 3 if args.quick else max(args.repeats, 7)
        for name, (wait_policy, setting) in POLICIES.items():
            out = subprocess.run(
                [sys.executable, __file__, "--neighbour-worker", str(neighbour.pid), "--cpu-threads", setting,
                 "--repeats", str(repeats)],
                env=policy_env(wait_policy), capture_output=True, text=True, check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            auto_threads = result["threads"] if setting == "auto" else auto_threads
            ratio = median_ratio(result["busy"], result["alone"])
            row("neighbour", f"{DEMO_STEP} stage-2 step, {name}: busy neighbour / alone",
                f"{med(result['busy']) * 1e3:.0f} ms", f"alone {med(result['alone']) * 1e3:.0f} ms", ratio,
                "<= 2x", ratio <= 2, result["threads"],
                f"{repeats} interleaved repeats; range busy {min(result['busy']) * 1e3:.0f}-{max(result['busy']) * 1e3:.0f} ms")

        demo = [str(REPO / "trainer" / "configs" / "demo.yaml"), *([] if args.full_demo else SHRUNK_DEMO)]
        what = "`make demo`" if args.full_demo else "`make demo` shrunk (" + " ".join(SHRUNK_DEMO) + ")"
        runs = {  # name: (command, OMP_WAIT_POLICY)
            "chosen (trainer/run.py)": ([sys.executable, str(REPO / "trainer" / "run.py")], None),
            "old default (library main, as cl2cm-train)": ([sys.executable, "-c", LIBRARY_MAIN], None),
        }
        walls = {name: {"alone": [], "busy": []} for name in runs}
        for r in range(1 if args.quick or args.full_demo else 2):
            for busy in ((False, True) if r % 2 == 0 else (True, False)):
                for name, (command, wait_policy) in runs.items():
                    set_neighbour(neighbour.pid, busy)
                    with tempfile.TemporaryDirectory() as out:
                        start = time.perf_counter()
                        done = subprocess.run([*command, *demo, "--output_dir", out], env=policy_env(wait_policy),
                                              capture_output=True, text=True, cwd=REPO)  # as `make demo`
                        if done.returncode:
                            raise RuntimeError(f"demo run failed ({name}):\n{done.stderr[-3000:]}")
                        walls[name]["busy" if busy else "alone"].append(time.perf_counter() - start)
        set_neighbour(neighbour.pid, False)
        for name, wall in walls.items():
            ratio = median_ratio(wall["busy"], wall["alone"])
            row("neighbour", f"{what} wall time, {name}: busy neighbour / alone", f"{med(wall['busy']):.1f} s",
                f"alone {med(wall['alone']):.1f} s", ratio, None, None, auto_threads,
                f"{len(wall['alone'])} run(s) each; cpu_threads auto")
    finally:
        neighbour.kill()
        neighbour.wait()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_description(args, started: float, load_start, commit: str) -> list[str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for module in ("ot", "faiss", "transformers", "accelerate"):
        try:
            versions[module if module != "ot" else "POT"] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    return [
        f"- CPU: {cpu_model()}, {cores()} cores available (os.cpu_count {os.cpu_count()})",
        f"- torch threads: {args.threads} (OT rows also at 1; POT and the NRCCR reference are single-threaded numpy"
        f" loops), float32 matmul precision highest",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- commit: {commit} (at the start of the run)",
        f"- command: `{' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}` (from the repository root)",
        f"- load average (1 min) at start / end: {load_start[0]:.1f} / {load_end[0]:.1f}"
        + " (the machine is shared: ratios are medians of interleaved repeats)" if load_start and load_end else "",
        f"- wall time: {time.time() - started:.0f} s",
    ]


def table(rows: list[dict]) -> list[str]:
    lines = ["| section | what | measured | reference | ratio | goal | met | threads | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] < 10 else f"{r['ratio']:.1f}"
        lines.append(f"| {r['section']} | {r['what']} | {r['measured']} | {r['reference']} | {ratio} | {r['goal']} "
                     f"| {r['met']} | {r['threads']} | {r['note']} |")
    return lines


NEIGHBOUR_BLOCK = "<!-- section neighbour: written by `benchmarks/speed.py --only neighbour` (own run) -->"


def write_report(path: Path, header: list[str], notes: str) -> None:
    """The page: the main table with its notes, and the `neighbour` section as a block of its own
    (its own run, machine lines and notes). A run of only one of the two keeps the other as it was."""
    old = path.read_text() if path.exists() else ""
    old_main, _, old_block = old.partition(NEIGHBOUR_BLOCK)
    rows = [r for r in ROWS if r["section"] != "neighbour"]
    neighbour_rows = [r for r in ROWS if r["section"] == "neighbour"]
    main = old_main.rstrip("\n").split("\n")
    if rows or not old:
        main = ["# Speed benchmarks", "", "Produced by `benchmarks/speed.py` (each comparison measured side by side in one run,",
                "interleaved; ratios are medians of per-repeat ratios).", "", "## Machine", "", *header, "", "## Results", "",
                *table(rows), "",
                "Ratios: `ot` = POT time / ours (speed-up); `eval` first row = ours / matmul alone, second = NRCCR / ours;",
                "`gallery` = achieved / machine GFLOP/s, then peak GiB beyond the gallery, then faiss / topk time;",
                "`step` = CL2CM step / plain step (plain: info_nce(visual, source) + info_nce(visual, MT), no teacher,",
                "same towers, same batch, AdamW step included); `encode` = fixed-padding time / length-sorted time."]
        if notes:
            main += ["", "## Notes", "", notes.strip()]
    block = old_block.strip("\n").split("\n") if old_block.strip() else []
    if neighbour_rows:
        block = ["## Next to a busy process (section `neighbour`)", "", *header, "", *table(neighbour_rows), "",
                 NEIGHBOUR_NOTES.strip()]
    lines = main + (["", NEIGHBOUR_BLOCK, "", *block] if block else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


NEIGHBOUR_NOTES = """
Ratio: time next to one busy process (a Python loop on one core) / time alone, interleaved (the
neighbour is stopped with SIGSTOP while "alone"); each policy runs in its own process, since
OpenMP reads `OMP_WAIT_POLICY` once at start. The step is `CrossModalTrainer.compute_loss` + backward +
AdamW step on the demo recipe's towers and batch, live teacher (as `make demo`). "Old default" is the
thread count torch picks (one per core) with libgomp's default wait (spin, then sleep); the chosen
policy keeps that count (`cpu_threads: auto`, the same low bits of the weights as before) and sets
`OMP_WAIT_POLICY=PASSIVE` in `trainer/run.py` before torch starts.
"""


NOTES = """
**Threads.** The rows run at 1 torch thread: this 2-core machine is shared with other jobs (load
average above), and at 2 threads every small multi-threaded op can wait a scheduler slice for its
second OpenMP thread. Measured interleaved in one process here: the OT loss of 128 pairs took
1,350 ms at 2 threads against 32 ms at 1 thread, while a 2048 x 256 x 4096 matmul took 139 against
118 ms; a demo-size stage-2 step took 8.0 s at 2 threads against 0.74 s at 1 (two smoke runs), with
ratios swinging from run to run. On a busy machine, train with `OMP_NUM_THREADS=1` (or fewer threads
than free cores). 1 thread is also the fair setting against POT and the NRCCR reference
(single-threaded numpy loops).

**OT (goal met).** `sinkhorn_plan` runs the scaling form in float32 when the largest column-wise
cost spread over epsilon is at most 60 (the stabilised kernel and the scalings then stay far inside
float32's range), otherwise in float64, and falls back to the log domain when a scaling under- or
overflows. Each half-iteration is one `baddbmm` of a (B, 1, n) row against a contiguous (B, n, m)
kernel plus one division into a preallocated buffer; padding is handled by adding 1 to the padded
entries of the product (their marginal is 0, so their scaling is exactly 0) instead of `torch.where`
in the loop. `bmm` with a (B, n, 1) column was 2-8x slower than the row form on this CPU. The POT
reference loop is timed with its cost matrices computed per pair in numpy, as in tests/test_losses.py
(the plan-only rows give POT its cost matrices for free). What remains in our time: the cost matrix
itself (normalise + a (128, 32, 256) x (128, 256, 32) bmm, about half of the loss time) and the
per-op dispatch of 200 small ops for 50 iterations.

**Evaluation (goal: at most 1.5x the matmul; near the bound at both sizes, on either side of it
from run to run: 1.60 / 1.48 in one run, 1.34 / 1.57 in the next, with other jobs on the machine;
the evaluation code did not change between them).** The matmul baseline writes into a
preallocated output; against `t @ v.T` with a fresh output (what NRCCR-style code does, page faults
of the 500 MB matrix included) the ratio at 25,000 x 5,000 was 0.95-1.13 over the runs here: the
ranks never build the full matrix. torch.profiler, 25,000 x 5,000 at 1 thread: `mm` 1.14 s (67 %),
the four compare passes per tile (`ge`/`gt` into a float mask, rows and columns) 0.23 s, their four
sums 0.11 s, per-tile bookkeeping (index, copy, add_, slice, nonzero, view: 10-50 calls of each
per tile, 120 tiles of 1042 x 1000) about 0.15 s. A separate micro-benchmark:
the counting passes cost 2.3 ms per 1042 x 1000 tile against 11.4 ms for its matmul (20 %); bool masks
are 9x slower and 128-row blocking does not help. What to change: (1) cut the per-tile Python work (~30
small ops per tile: the int32 conversions of the four counts, advanced indexing of the own pairs,
`count[own_q] += ...`, `nonzero` of flagged rows; ~9 % here): keep the counts in float32 until the
end, gather the own-pair tile values for a whole chunk at once, and use fewer, larger tiles (the
1 Mi-element tile cap gives 120 tiles here); (2) read each tile once per direction instead of twice: a
fused compare-and-count (a `torch.compile`d helper with an eager fallback, or a small C++ op) would
remove the float-mask writes and half the reads, about 15 % of the matmul time; (3) at 1,000 items
fixed per-call costs weigh more (`bincount` of the targets 3 ms, the canonical float64 scores of
the 5,000 own pairs). The speed-up over NRCCR's evaluation is 8-9x.

**Large gallery (goals met).** `_float32_candidates` keeps each query's running `width`-th best
score; per tile it computes `tile.amax(1)` (one pass, a few per cent of the matmul) and runs
`torch.topk` and the merge only on the rows whose best beats that threshold, which after the first
chunks are a few per cent of them. Before this change `torch.topk` on every tile took 56 % of the
time and the tile matmuls 39 % (torch.profiler, 1,000 x 200,000 x 256, 1 thread), and the search ran
at 17.1 of 51.7 GFLOP/s (0.33); now at about two thirds of the matmul rate, with the same results
(the exactness tests in tests/test_retrieval.py, chunk sizes down to 1 row). Side by side in one
process, 1,000 x 200,000 x 256, 1 thread, with other jobs on the machine: 7.2-7.6 s before, 5.0 s
after. The memory beyond the gallery is at most tens of MiB of tiles and candidates (the budget is
256 MiB); faiss's `IndexFlatIP` holds a second copy of the gallery (about 1 GiB here) and searches
at close to the matmul rate.

**Stage-2 step (goals met).** The live teacher costs two forward passes of the text tower without
gradient per step, against the student's two forward-backward passes (about 3x a forward each):
the ratio is about 1 + 2/(2 x 3 + visual + optimizer), i.e. about 1.3 for any tower, close to the
1.35 bound (1.25-1.35 over the runs here). Running the teacher's two sides as one concatenated batch or under `inference_mode` did
not help (measured: within noise). `precompute_teacher: true` removes it (ratio ~1.0).

**Text embedding.** Length-sorted batches pad each batch only to its own longest text: 2-3x the
throughput of fixed padding to `max_length` on both vocabularies (the gain is roughly
max_length / mean length, less the per-batch overheads); the embeddings are the same (asserted).
"""

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
    parser.add_argument("--neighbour-worker", type=int, metavar="PID", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-threads", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.neighbour_worker:
        return neighbour_worker(args.neighbour_worker, args.cpu_threads, args.repeats)
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
    write_report(Path(args.out), header, NOTES)
    print("\n".join(header))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
