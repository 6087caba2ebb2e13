"""Losses against slow, explicit references in float64 (POT for the Sinkhorn OT loss)."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl2cm_hf import info_nce, relational_distillation, sinkhorn_ot_loss, vse_triplet
from cl2cm_hf.losses import sinkhorn_plan

ot = pytest.importorskip("ot", reason="POT (pip install pot) is the reference Sinkhorn")

DT = torch.float64


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


# ---------------------------------------------------------------------------------------------
# Slow references: explicit Python loops over anchors, keys and negatives.
# ---------------------------------------------------------------------------------------------


def ref_info_nce(a, b, temperature):
    n = a.shape[0]
    total = 0.0
    for anchors, cands in ((a, b), (b, a)):
        for i in range(n):
            logits = [float(anchors[i] @ cands[j]) / temperature for j in range(n)]
            log_z = math.log(sum(math.exp(x) for x in logits))
            total += -(logits[i] - log_z)
    return total / (2 * n)


def ref_vse_triplet(a, b, margin=0.2):
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        # anchor a_i against every negative b_j, and anchor b_i against every negative a_j
        pos = float(a[i] @ b[i])
        worst_ab = max(max(0.0, margin + float(a[i] @ b[j]) - pos) for j in range(n) if j != i)
        worst_ba = max(max(0.0, margin + float(b[i] @ a[j]) - pos) for j in range(n) if j != i)
        total += worst_ab + worst_ba
    return total / n


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_relational_distillation(sq, sk, tq, tk, s_scale, t_scale, temperature):
    n = sq.shape[0]

    def cos(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    rows = 0.0
    for i in range(n):  # query i: distribution over keys j
        p_t = _softmax([t_scale * cos(tq[i], tk[j]) / temperature for j in range(n)])
        p_s = _softmax([s_scale * cos(sq[i], sk[j]) / temperature for j in range(n)])
        rows += _kl(p_t, p_s)
    cols = 0.0
    for j in range(n):  # key j: distribution over queries i
        p_t = _softmax([t_scale * cos(tq[i], tk[j]) / temperature for i in range(n)])
        p_s = _softmax([s_scale * cos(sq[i], sk[j]) / temperature for i in range(n)])
        cols += _kl(p_t, p_s)
    return (rows / n + cols / n) / 2 * temperature**2


def ref_ot_loss(x, x_mask, y, y_mask, epsilon, n_iter, method="sinkhorn"):
    """POT's ot.sinkhorn on each pair's unpadded sub-matrix; mean of <P, C> over valid pairs."""
    losses = []
    for i in range(x.shape[0]):
        xi = x[i][x_mask[i].bool()].detach().double().numpy()
        yi = y[i][y_mask[i].bool()].detach().double().numpy()
        if len(xi) == 0 or len(yi) == 0:
            continue
        xi = xi / np.linalg.norm(xi, axis=1, keepdims=True)
        yi = yi / np.linalg.norm(yi, axis=1, keepdims=True)
        cost = 1.0 - xi @ yi.T
        a = np.full(len(xi), 1.0 / len(xi))
        b = np.full(len(yi), 1.0 / len(yi))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(a, b, cost, epsilon, method=method, numItermax=n_iter, stopThr=0, warn=False)
        assert np.isfinite(plan).all(), "the POT reference itself is not finite"
        losses.append(float((plan * cost).sum()))
    return float(np.mean(losses)) if losses else 0.0


def random_tokens(batch, n, m, d=8, seed=0, min_len=1):
    """Token embeddings with random right-padding (padding values are garbage on purpose)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g, dtype=DT)
    y = torch.randn(batch, m, d, generator=g, dtype=DT)
    x_len = torch.randint(min_len, n + 1, (batch,), generator=g)
    y_len = torch.randint(min_len, m + 1, (batch,), generator=g)
    x_mask = (torch.arange(n)[None] < x_len[:, None]).long()
    y_mask = (torch.arange(m)[None] < y_len[:, None]).long()
    return x, x_mask, y, y_mask


# ---------------------------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_info_nce_matches_explicit_cross_entropy(temperature):
    a, b = unit(6, 5, seed=1), unit(6, 5, seed=2)
    got = info_nce(a, b, temperature)
    assert got.dtype == DT
    assert got.item() == pytest.approx(ref_info_nce(a, b, temperature), abs=1e-10)


def test_info_nce_tensor_temperature_gets_gradient():
    a, b = unit(4, 3, seed=3), unit(4, 3, seed=4)
    log_scale = torch.tensor(math.log(10.0), dtype=DT, requires_grad=True)
    loss = info_nce(a, b, 1.0 / log_scale.exp())
    assert loss.item() == pytest.approx(ref_info_nce(a, b, 0.1), abs=1e-10)
    loss.backward()
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad)


def test_info_nce_perfect_alignment_is_low_and_symmetric():
    a = unit(5, 8, seed=5)
    assert info_nce(a, a, 0.01).item() < 1e-6
    b = unit(5, 8, seed=6)
    assert info_nce(a, b, 0.1).item() == pytest.approx(info_nce(b, a, 0.1).item(), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# VSE++ max-violation triplet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vse_triplet_matches_explicit_loops(seed):
    a, b = unit(7, 4, seed=10 + seed), unit(7, 4, seed=20 + seed)
    got = vse_triplet(a, b)  # default margin 0.2
    assert got.item() == pytest.approx(ref_vse_triplet(a, b, 0.2), abs=1e-12)
    assert got.item() > 0  # random 4-d vectors always violate the margin somewhere


def test_vse_triplet_margin_and_zero_when_separated():
    a = unit(5, 5, seed=7)
    assert vse_triplet(a, a, margin=0.2).item() == pytest.approx(ref_vse_triplet(a, a, 0.2), abs=1e-12)
    eye = torch.eye(4, dtype=DT)  # positives cos 1, negatives cos 0: violation only if margin > 1
    assert vse_triplet(eye, eye, margin=0.2).item() == 0.0
    assert vse_triplet(eye, eye, margin=1.5).item() == pytest.approx(2 * 0.5)


# ---------------------------------------------------------------------------------------------
# Relational distillation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_relational_distillation_matches_explicit_loops(temperature):
    sq, sk = unit(6, 5, seed=30), unit(6, 5, seed=31)
    tq, tk = unit(6, 5, seed=32), unit(6, 5, seed=33)
    got = relational_distillation(sq, sk, tq, tk, 7.0, 20.0, temperature)
    want = ref_relational_distillation(sq, sk, tq, tk, 7.0, 20.0, temperature)
    assert got.item() == pytest.approx(want, abs=1e-10)


def test_relational_distillation_uses_each_scale_for_its_own_side():
    sq, sk = unit(5, 4, seed=40), unit(5, 4, seed=41)
    tq, tk = unit(5, 4, seed=42), unit(5, 4, seed=43)
    got = relational_distillation(sq, sk, tq, tk, torch.tensor(3.0, dtype=DT), torch.tensor(30.0, dtype=DT))
    swapped = relational_distillation(sq, sk, tq, tk, 30.0, 3.0)
    assert got.item() == pytest.approx(ref_relational_distillation(sq, sk, tq, tk, 3.0, 30.0, 1.0), abs=1e-10)
    assert swapped.item() == pytest.approx(ref_relational_distillation(sq, sk, tq, tk, 30.0, 3.0, 1.0), abs=1e-10)
    assert abs(got.item() - swapped.item()) > 1e-3


def test_relational_distillation_temperature_squared_factor():
    sq, sk = unit(5, 4, seed=50), unit(5, 4, seed=51)
    tq, tk = unit(5, 4, seed=52), unit(5, 4, seed=53)
    t = 3.0
    got = relational_distillation(sq, sk, tq, tk, 10.0, 12.0, temperature=t)
    kl_only = ref_relational_distillation(sq, sk, tq, tk, 10.0, 12.0, t) / t**2
    assert got.item() == pytest.approx(kl_only * t**2, abs=1e-10)
    assert got.item() != pytest.approx(kl_only, rel=1e-3)


def test_relational_distillation_zero_when_student_equals_teacher():
    q, k = unit(5, 4, seed=54), unit(5, 4, seed=55)
    assert relational_distillation(q, k, q, k, 9.0, 9.0).item() == pytest.approx(0.0, abs=1e-12)


def test_relational_distillation_teacher_is_detached():
    sq = unit(5, 4, seed=60).requires_grad_(True)
    sk = unit(5, 4, seed=61).requires_grad_(True)
    tq = unit(5, 4, seed=62).requires_grad_(True)
    tk = unit(5, 4, seed=63).requires_grad_(True)
    s_scale = torch.tensor(5.0, dtype=DT, requires_grad=True)
    t_scale = torch.tensor(15.0, dtype=DT, requires_grad=True)
    loss = relational_distillation(sq, sk, tq, tk, s_scale, t_scale, temperature=1.5)
    loss.backward()
    for name, tensor in (("teacher_q", tq), ("teacher_k", tk), ("teacher_scale", t_scale)):
        assert tensor.grad is None, f"{name} received a gradient: the teacher must be detached"
    for name, tensor in (("student_q", sq), ("student_k", sk), ("student_scale", s_scale)):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, f"{name} got no gradient"


# ---------------------------------------------------------------------------------------------
# Sinkhorn OT word alignment against POT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "epsilon, n_iter, method",
    [
        (0.5, 20, "sinkhorn"),
        (0.1, 50, "sinkhorn"),
        (0.05, 100, "sinkhorn"),
        (0.01, 100, "sinkhorn"),
        (0.003, 100, "sinkhorn_log"),
        (0.001, 100, "sinkhorn_log"),
    ],
)
def test_sinkhorn_ot_loss_matches_pot_with_random_padding(epsilon, n_iter, method):
    x, x_mask, y, y_mask = random_tokens(12, 9, 11, d=6, seed=int(1 / epsilon))
    assert (x_mask == 0).any() and (y_mask == 0).any()  # padding is really there
    got = sinkhorn_ot_loss(x, x_mask, y, y_mask, epsilon=epsilon, n_iter=n_iter)
    want = ref_ot_loss(x, x_mask, y, y_mask, epsilon, n_iter, method=method)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("epsilon, method", [(0.01, "sinkhorn"), (0.001, "sinkhorn_log")])
def test_sinkhorn_plan_per_pair_matches_pot(epsilon, method):
    """Plans themselves (not just the loss) equal POT's on the unpadded block; zero on padding."""
    x, x_mask, y, y_mask = random_tokens(6, 7, 5, d=4, seed=3)
    cost = 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)
    a = x_mask / x_mask.sum(1, keepdim=True)
    b = y_mask / y_mask.sum(1, keepdim=True)
    plan = sinkhorn_plan(cost, a.double(), b.double(), epsilon, 60)
    for i in range(6):
        n, m = int(x_mask[i].sum()), int(y_mask[i].sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ot.sinkhorn(
                np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost[i, :n, :m].numpy(), epsilon,
                method=method, numItermax=60, stopThr=0, warn=False,
            )
        np.testing.assert_allclose(plan[i, :n, :m].numpy(), want, atol=1e-6)
        assert plan[i, n:].abs().sum() == 0 and plan[i, :, m:].abs().sum() == 0


def test_sinkhorn_ot_loss_large_batch_one_call():
    """128 pairs of up to 32x32 tokens in a single call, every pair checked against POT."""
    x, x_mask, y, y_mask = random_tokens(128, 32, 32, d=16, seed=128, min_len=2)
    x_mask[0] = 1  # at least one full-length pair on each side
    y_mask[0] = 1
    got = sinkhorn_ot_loss(x, x_mask, y, y_mask, epsilon=0.05, n_iter=50)
    want = ref_ot_loss(x, x_mask, y, y_mask, 0.05, 50)
    assert got.item() == pytest.approx(want, abs=1e-4)


def test_sinkhorn_ot_loss_float32_inputs_close_to_reference():
    x, x_mask, y, y_mask = random_tokens(8, 10, 10, d=8, seed=9)
    got = sinkhorn_ot_loss(x.float(), x_mask, y.float(), y_mask, epsilon=0.05, n_iter=50)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_ot_loss(x, x_mask, y, y_mask, 0.05, 50), abs=1e-4)


def test_sinkhorn_ot_loss_all_padding_row_and_single_tokens_are_finite():
    x, x_mask, y, y_mask = random_tokens(5, 6, 6, d=8, seed=11)
    x_mask[1] = 0  # a caption with no token at all
    y_mask[3] = 0
    x_mask[2] = 0
    x_mask[2, 0] = 1  # single-token captions
    y_mask[2] = 0
    y_mask[2, 0] = 1
    x.requires_grad_(True)
    y.requires_grad_(True)
    for eps, method in ((0.1, "sinkhorn"), (0.001, "sinkhorn_log")):
        loss = sinkhorn_ot_loss(x, x_mask, y, y_mask, epsilon=eps, n_iter=30)
        assert torch.isfinite(loss)
        assert loss.item() == pytest.approx(ref_ot_loss(x, x_mask, y, y_mask, eps, 30, method=method), abs=1e-4)
        gx, gy = torch.autograd.grad(loss, (x, y))
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
        assert gx[1].abs().sum() == 0 and gy[3].abs().sum() == 0  # empty pairs contribute nothing

    # A single-token pair has the only possible plan: cost 1 - cos of the two tokens.
    one = sinkhorn_ot_loss(x[2:3, :1], x_mask[2:3, :1], y[2:3, :1], y_mask[2:3, :1])
    want = 1.0 - F.cosine_similarity(x[2, 0], y[2, 0], dim=0)
    assert one.item() == pytest.approx(want.item(), abs=1e-8)

    # A batch with no valid pair at all: a zero that still belongs to the graph.
    empty = sinkhorn_ot_loss(x, torch.zeros_like(x_mask), y, y_mask)
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()


def test_sinkhorn_ot_loss_gradient_flows_to_both_sides():
    x, x_mask, y, y_mask = random_tokens(4, 5, 6, d=8, seed=12)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = sinkhorn_ot_loss(x, x_mask, y, y_mask, epsilon=0.1, n_iter=50)
    loss.backward()
    assert x.grad is not None and y.grad is not None
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    # padded tokens are not aligned, so they get no gradient
    assert x.grad[~x_mask.bool()].abs().sum() == 0
    assert y.grad[~y_mask.bool()].abs().sum() == 0
    # The plan is a constant: the gradient is that of <P, C> with P fixed.
    cost = 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)
    a = x_mask / x_mask.sum(1, keepdim=True)
    b = y_mask / y_mask.sum(1, keepdim=True)
    plan = sinkhorn_plan(cost.detach(), a.double(), b.double(), 0.1, 50)
    gx, gy = torch.autograd.grad((plan * cost).sum((1, 2)).mean(), (x, y))
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(y.grad, gy)


def test_sinkhorn_ot_loss_rejects_mismatched_shapes():
    x, x_mask, y, y_mask = random_tokens(3, 4, 5, seed=13)
    with pytest.raises(ValueError, match="batch sizes differ"):
        sinkhorn_ot_loss(x, x_mask, y[:2], y_mask[:2])
    with pytest.raises(ValueError, match="masks"):
        sinkhorn_ot_loss(x, x_mask[:, :3], y, y_mask)
