"""Section `ot`: `sinkhorn_ot_loss` (batched) against a loop of POT `ot.sinkhorn` over the pairs,
same epsilon, same iterations, same value."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.speed_bench.timing import interleaved, med, median_ratio, row
from cl2cm_hf.losses import sinkhorn_ot_loss, sinkhorn_plan


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
