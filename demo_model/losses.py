"""CL2CM losses as pure functions of embeddings.

Every batch loss is written in the *local-loss* form (open_clip's ``local_loss=True``): each process
scores its own rows against the columns of all processes, gathered with gradient, with the
positives offset by ``rank * B``. Averaged by DDP, loss and gradients then equal one process on the
global batch. Without ``torch.distributed`` (or with one process) the gather is the identity.

Imports only torch (the file travels inside checkpoints next to the modeling code).
"""

import torch
import torch.nn.functional as F

from .errors import CL2CMError


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` over all processes along dim 0; gradients flow back to each owner."""
    _, world = _world()
    if world == 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    try:  # the functional collective (its backward reduce-scatters the gradient)
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the (since deprecated) autograd all_gather
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(x.contiguous()))
    return all_gather_single_autograd(x.contiguous(), 0, torch.distributed.group.WORLD)


def _local_positives(batch: int, device) -> torch.Tensor:
    """Indices, in the gathered batch, of this process's own rows."""
    rank, _ = _world()
    return torch.arange(batch, device=device) + rank * batch


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE over cosine similarities of L2-normalised `a`, `b` `(B, d)`; row i of `a`
    and row i of `b` are the positive pair. Mean of the a->b and b->a cross-entropies."""
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    labels = _local_positives(a.shape[0], a.device)
    loss_ab = F.cross_entropy(a @ all_b.t() / temperature, labels)
    loss_ba = F.cross_entropy(b @ all_a.t() / temperature, labels)
    return (loss_ab + loss_ba) / 2


def vse_triplet(a: torch.Tensor, b: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++ max-violation hinge (Faghri et al.; NRCCR's loss) on cosine similarities.

    For each anchor, only the hardest negative counts, in both directions. Averaged over anchors
    (VSE++ sums; the mean keeps the learning rate independent of the batch size)."""
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    labels = _local_positives(a.shape[0], a.device)

    def hardest(anchors, candidates):
        scores = anchors @ candidates.t()
        positive = scores.gather(1, labels[:, None])
        hinge = (margin + scores - positive).clamp(min=0)
        hinge = hinge.scatter(1, labels[:, None], 0.0)
        return hinge.max(dim=1).values

    return (hardest(a, all_b) + hardest(b, all_a)).mean()


def relational_distillation(
    student_q: torch.Tensor,
    student_k: torch.Tensor,
    teacher_q: torch.Tensor,
    teacher_k: torch.Tensor,
    student_scale: float | torch.Tensor,
    teacher_scale: float | torch.Tensor,
    temperature: float = 1.0,
    teacher_entropy: float | None = None,
    queue_student_k: torch.Tensor | None = None,
    queue_teacher_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """CL2CM's cross-lingual knowledge transfer: KL(teacher || student) of similarity distributions.

    Student logits `student_scale * cos(q_i, k_j)` (CM: target caption vs visual item), teacher logits
    `teacher_scale * cos(q°_i, k°_j)` (CL: target caption vs source caption of item j). Each network
    keeps its own learned scale: the teacher's calibration is part of the knowledge, and raw cosines
    at an arbitrary temperature make a worse teacher. Rows (over keys) and columns (over queries) are
    averaged; the teacher is detached. Multiplied by `temperature**2` (Hinton) so gradients keep their
    size when `temperature` changes. All inputs are L2-normalised `(B, d)`.

    `teacher_entropy`: every teacher distribution is first recalibrated (`entropy_calibrated`) to this
    many nats, so rows the teacher is unsure of and rows it is sure of carry relations of the same
    spread. `queue_student_k`/`queue_teacher_k` `(Q, d)`: keys of earlier batches (a `RelationQueue`,
    without gradient), appended to the keys of the rows, so each query's relations reach past the batch.
    """
    teacher_q, teacher_k = teacher_q.detach(), teacher_k.detach()
    teacher_scale = teacher_scale.detach() if torch.is_tensor(teacher_scale) else teacher_scale
    all_sq, all_sk = gather_with_grad(student_q), gather_with_grad(student_k)
    all_tq, all_tk = gather_with_grad(teacher_q), gather_with_grad(teacher_k)
    if queue_student_k is not None and len(queue_student_k):
        all_sk = torch.cat([all_sk, queue_student_k.detach().to(all_sk.dtype)])
        all_tk = torch.cat([all_tk, queue_teacher_k.detach().to(all_tk.dtype)])

    def kl(student_logits, teacher_logits):
        log_p_student = F.log_softmax(student_logits / temperature, dim=1)
        teacher_logits = teacher_logits / temperature
        if teacher_entropy is not None:
            teacher_logits = entropy_calibrated(teacher_logits, teacher_entropy)
        log_p_teacher = F.log_softmax(teacher_logits, dim=1)
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")

    rows = kl(student_scale * student_q @ all_sk.t(), teacher_scale * teacher_q @ all_tk.t())
    cols = kl(student_scale * student_k @ all_sq.t(), teacher_scale * teacher_k @ all_tq.t())
    return (rows + cols) / 2 * temperature**2


@torch.no_grad()
def entropy_calibrated(logits: torch.Tensor, entropy: float, n_iter: int = 40) -> torch.Tensor:
    """`logits` `(N, M)` with each row multiplied by its own factor `beta_i > 0` such that the
    entropy of `softmax(beta_i * logits_i)` is `entropy` nats (t-SNE's perplexity calibration).

    The entropy falls as beta grows, from log M (beta -> 0) to the log of the row's number of maxima,
    so a bisection on log beta finds it; a target outside that range gives the nearest end (a small
    last batch may have fewer than exp(entropy) keys). Rows whose logits are all equal stay uniform."""
    work = logits.double()
    low = torch.full((work.shape[0], 1), -12.0, dtype=work.dtype, device=work.device)
    high = torch.full_like(low, 12.0)
    for _ in range(n_iter):
        mid = (low + high) / 2
        log_p = F.log_softmax(work * mid.exp(), dim=1)
        too_flat = -(log_p.exp() * log_p).sum(1, keepdim=True) > entropy  # then sharpen: a larger beta
        low, high = torch.where(too_flat, mid, low), torch.where(too_flat, high, mid)
    return (work * ((low + high) / 2).exp()).to(logits.dtype)


# Largest (cost spread) / epsilon for which the scaling form runs in float32: the stabilised kernel
# then stays above exp(-60) ~ 1e-26 and the scalings below ~1e26, far inside float32's range.
_FLOAT32_MAX_SPREAD = 60.0


@torch.no_grad()
def sinkhorn_plan(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float, n_iter: int) -> torch.Tensor:
    """Entropic OT plans for a batch: `cost` `(B, n, m)`, marginals `a` `(B, n)`, `b` `(B, m)`
    (zeros on padding). The same iterations as POT's `ot.sinkhorn` (u, v start at 1/n, 1/m; v then
    u), in the scaling form, with each column's minimum cost taken out of the kernel to keep
    `exp(-C/eps)` representable. That factor is absorbed by v, which is updated first, so every
    iterate's plan equals POT's.

    Precision: float64 inputs run in float64. Other inputs run in float32 when the largest cost
    spread within a column over epsilon is at most 60 (every kernel entry and scaling then lies well
    inside float32's range; the plan agrees with POT's float64 to ~1e-6 relative), else in float64.
    Should a scaling still under- or overflow (epsilon below about 0.003), the batch is redone in
    the log domain."""
    support = (a > 0)[:, :, None] & (b > 0)[:, None, :]
    work = cost if cost.dtype == torch.float64 else cost.float()  # half precision: float32 at least
    col_min = work.masked_fill(~support, float("inf")).amin(dim=1, keepdim=True)
    col_min = torch.where(torch.isfinite(col_min), col_min, torch.zeros_like(col_min))
    shifted = (work - col_min).masked_fill_(~support, 0.0)
    spread = float(shifted.amax()) if shifted.numel() else 0.0
    plan = None
    if work.dtype == torch.float32 and spread / epsilon <= _FLOAT32_MAX_SPREAD:
        plan = _sinkhorn_plan_scaling(shifted, a.float(), b.float(), support, epsilon, n_iter)
    if plan is None or not _plan_ok(plan, a, b):
        shifted = (cost.double() - col_min.double()).masked_fill_(~support, 0.0)
        plan = _sinkhorn_plan_scaling(shifted, a.double(), b.double(), support, epsilon, n_iter)
    if not _plan_ok(plan, a, b):
        plan = _sinkhorn_plan_log(cost.double(), a.double(), b.double(), support, epsilon, n_iter)
    return plan.to(cost.dtype)


def _plan_ok(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Finite, and not all zero for a pair with tokens on both sides (a sign of underflow). The
    entries are non-negative, so a NaN or an inf anywhere shows in its pair's sum."""
    sums = plan.sum((1, 2))
    empty = (sums == 0) & (a.sum(1) > 0) & (b.sum(1) > 0)
    return bool(torch.isfinite(sums).all()) and not bool(empty.any())


def _sinkhorn_plan_scaling(shifted, a, b, support, epsilon: float, n_iter: int) -> torch.Tensor:
    """Scaling-form Sinkhorn on the column-shifted costs, in their dtype.

    Each half-iteration is two operations: one batched vector-matrix product (`baddbmm` of a
    `(B, 1, n)` row with a contiguous `(B, n, m)` kernel: several times faster on CPU than `bmm`
    with a `(B, n, 1)` column) and one division into a preallocated buffer. Padding needs no select
    in the loop: the product adds 1 on padded columns, whose kernel column is all zero and whose
    marginal is zero, so they get exactly 0 / 1 = 0 while real columns get exactly `b / (K^T u)`:
    the iterates equal POT's `where(b > 0, b / (K^T u), 0)` on every real entry."""
    batch, n, m = shifted.shape
    dtype, device = shifted.dtype, shifted.device
    kernel = torch.exp(shifted / -epsilon).mul_(support)
    kernel_t = kernel.transpose(1, 2).contiguous()
    pad_a = (a <= 0).to(dtype)[:, None, :]
    pad_b = (b <= 0).to(dtype)[:, None, :]
    a_row, b_row = a[:, None, :].contiguous(), b[:, None, :].contiguous()
    u = (a > 0).to(dtype)[:, None, :] / n
    v = torch.empty(batch, 1, m, dtype=dtype, device=device)
    ktu = torch.empty(batch, 1, m, dtype=dtype, device=device)
    kv = torch.empty(batch, 1, n, dtype=dtype, device=device)
    for _ in range(n_iter):
        torch.div(b_row, torch.baddbmm(pad_b, u, kernel, out=ktu), out=v)
        torch.div(a_row, torch.baddbmm(pad_a, v, kernel_t, out=kv), out=u)
    return kernel.mul_(u.transpose(1, 2)).mul_(v)


def _sinkhorn_plan_log(cost, a, b, support, epsilon: float, n_iter: int) -> torch.Tensor:
    """Log-domain Sinkhorn (same iterations as the scaling form), stable for any epsilon."""
    neg_inf = torch.tensor(float("-inf"), dtype=cost.dtype, device=cost.device)
    log_k = torch.where(support, -cost / epsilon, neg_inf)
    log_a = torch.where(a > 0, a.log(), neg_inf)
    log_b = torch.where(b > 0, b.log(), neg_inf)
    log_u = torch.where(a > 0, -torch.log(torch.tensor(float(a.shape[1]), dtype=cost.dtype)), neg_inf)
    log_v = torch.zeros_like(log_b)
    for _ in range(n_iter):
        log_v = torch.where(b > 0, log_b - torch.logsumexp(log_k + log_u[:, :, None], dim=1), neg_inf)
        log_u = torch.where(a > 0, log_a - torch.logsumexp(log_k + log_v[:, None, :], dim=2), neg_inf)
    plan = torch.exp(log_u[:, :, None] + log_k + log_v[:, None, :])
    return torch.nan_to_num(plan, nan=0.0)


def sinkhorn_ot_loss(
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    epsilon: float = 0.1,
    n_iter: int = 50,
) -> torch.Tensor:
    """Word-level alignment: mean over pairs of the OT cost `<P, C>` between token sets.

    `x` `(B, n, d)` and `y` `(B, m, d)` are token embeddings with masks `(B, n)`, `(B, m)`; the cost
    is `1 - cos` over non-padding tokens, marginals are uniform over each caption's tokens, and the
    entropic plan `P` (see `sinkhorn_plan`) is computed without gradient, so the gradient moves the
    tokens along the current best alignment. Pairs where either side has no token are left out;
    a batch with none gives a zero that still belongs to the graph.
    """
    if x.shape[0] != y.shape[0]:
        raise CL2CMError(f"x and y batch sizes differ: {x.shape[0]} vs {y.shape[0]}")
    if tuple(x_mask.shape) != tuple(x.shape[:2]) or tuple(y_mask.shape) != tuple(y.shape[:2]):
        raise CL2CMError(
            f"masks {tuple(x_mask.shape)}, {tuple(y_mask.shape)} do not match tokens {tuple(x.shape[:2])}, {tuple(y.shape[:2])}"
        )
    x_mask, y_mask = x_mask.to(x.dtype), y_mask.to(y.dtype)
    cost = 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)
    a = x_mask / x_mask.sum(1, keepdim=True).clamp(min=1)
    b = y_mask / y_mask.sum(1, keepdim=True).clamp(min=1)
    plan = sinkhorn_plan(cost.detach(), a, b, epsilon, n_iter)
    per_pair = (plan * cost).sum((1, 2))
    valid = (x_mask.sum(1) > 0) & (y_mask.sum(1) > 0)
    return (per_pair * valid).sum() / valid.sum().clamp(min=1)


__all__ = ["gather_with_grad", "info_nce", "vse_triplet", "relational_distillation", "sinkhorn_plan", "sinkhorn_ot_loss"]
