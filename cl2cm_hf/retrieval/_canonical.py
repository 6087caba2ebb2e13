"""Canonical scores (torch), computed where the float32 error bound (`_bound`) says they are needed.

A float32 matmul does not give the same bits for the same pair in tiles of different shapes, so
ranks and top-k are defined on the canonical score of a pair: the float64 inner product of the
float32 vectors with a fixed pairwise summation order. Float32 tiles only filter; pairs whose tile
score is within the error bound of a threshold are re-scored here (see the package docstring).
"""

from __future__ import annotations

import math

import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.retrieval._bounds import NORM_MARGIN

PAIR_BATCH = 1 << 14  # pairs per batch where rows are gathered for canonical re-scoring
_PAIR_WORKSPACE = 1 << 19  # float64 elements of each canonical-score workspace (4 MiB)


def canonical_dot(a: torch.Tensor, b: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
    """Row-wise inner products of float32 rows in float64, with a fixed pairwise summation order.

    Every product of two float32 numbers is exact in float64; the sum uses the same tree for any
    number of rows, so a pair always gets the same bits wherever it is computed. Works in place in
    two float64 workspaces, kept in `workspace` (a worker's state) for the next call when given."""
    n, d = a.shape
    out = torch.empty(n, dtype=torch.float64, device=a.device)
    if n == 0:
        return out
    width = 1 << max(0, (d - 1).bit_length())
    batch = max(1, _PAIR_WORKSPACE // width)
    rows = min(n, batch)
    cached = (workspace or {}).get("canonical")
    if cached is not None and cached[0].shape[0] >= rows and cached[0].shape[1] == width and cached[0].device == a.device:
        prod_ws, other_ws = cached
    else:
        prod_ws = torch.zeros(rows, width, dtype=torch.float64, device=a.device)  # padding stays zero
        other_ws = torch.empty(rows, d, dtype=torch.float64, device=a.device)
        if workspace is not None:
            workspace["canonical"] = (prod_ws, other_ws)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        prod = prod_ws[: stop - start]
        prod[:, :d].copy_(a[start:stop])
        prod[:, :d].mul_(other_ws[: stop - start].copy_(b[start:stop]))
        while prod.shape[1] > 1:  # the tree only writes columns < width / 2 < d
            half = prod.shape[1] // 2
            prod = prod[:, :half].add_(prod[:, half:])
        out[start:stop] = prod[:, 0]
    return out


def norms(x: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """Row norms (float64), rounded up a little (float32 norms are within ~d u of the truth, far
    inside the factor-2 margin of the error bound). They double as the check that every value is
    finite: a NaN or an inf makes its row's norm non-finite."""
    row_norms = torch.linalg.vector_norm(x, dim=1)
    if not bool(torch.isfinite(row_norms).all()):
        finite_rows = torch.isfinite(x).all(dim=1)
        if not bool(finite_rows.all()):
            bad = int(torch.nonzero(~finite_rows)[0, 0]) + offset
            raise CL2CMError(f"{name} has non-finite values (NaN or inf), first in row {bad}")
        raise CL2CMError(f"{name} has rows too large for float32 scores; L2-normalise the embeddings")
    return row_norms.double() * NORM_MARGIN


def round_down(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the largest float32 not above it."""
    y = x.float()
    return torch.where(y.double() > x, torch.nextafter(y, torch.full_like(y, -math.inf)), y)


def round_up(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the smallest float32 not below it."""
    y = x.float()
    return torch.where(y.double() < x, torch.nextafter(y, torch.full_like(y, math.inf)), y)
