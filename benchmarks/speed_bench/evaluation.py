"""Section `eval`: `retrieval_metrics` against the similarity matmul alone and against NRCCR's
evaluation (identical metrics asserted)."""

from __future__ import annotations

import gc
import math

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.speed_bench.timing import interleaved, med, median_ratio, row


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
    sizes = [(200, 3)] if args.quick else [(1000, args.repeats), (5000, 3)]
    for items, repeats in sizes:
        eval_rows(items, repeats, args.threads)
        gc.collect()  # the size's embeddings and score matrix are gone before the next size


def eval_rows(items: int, repeats: int, threads: int, d: int = 256, per_item: int = 5) -> None:
    """The two rows of one size: ours against the matmul alone, NRCCR's evaluation against ours."""
    from cl2cm_hf.retrieval import retrieval_metrics

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
        over_matmul <= 1.5, threads,
        f"matmul into a preallocated output; with a fresh output (`t @ v.T`, page faults included) "
        f"{med(times['matmul_alloc']) * 1e3:.0f} ms, ratio {median_ratio(times['ours'], times['matmul_alloc']):.2f}; "
        f"R@1 t2v {ours['t2v_r1']:.1f}; metrics identical to NRCCR's")
    speedup = median_ratio(times["nrccr"], times["ours"])
    row("eval", f"NRCCR-style evaluation / retrieval_metrics, {size}", f"{med(times['ours']) * 1e3:.0f} ms",
        f"NRCCR {med(times['nrccr']) * 1e3:.0f} ms", speedup, None, None, threads, "speed-up over NRCCR")
