"""Bounds, without torch: the float32 error bound of a score, the largest norms it holds for, the
range of k. Shared by the torch search (`search`, `ranking`) and the numpy one (`search_numpy`)."""

from __future__ import annotations

import numpy as np

from cl2cm_hf.errors import CL2CMError

_UNIT_ROUNDOFF_32 = 2.0**-24
_UNIT_ROUNDOFF_64 = 2.0**-53
_SMALLEST_NORMAL_32 = 2.0**-126
NORM_MARGIN = 1.0 + 2.0**-10  # row norms are rounded up by this much (float32 norms are within ~d u of the truth)


def error_factor(d: int) -> tuple[float, float]:
    """(relative, absolute) bound of |float32 tile score - canonical score| per unit of |q| |g|.

    gamma_d of float32 (any summation order, FMA or not) plus gamma_d of the canonical float64 sum,
    doubled as a margin for the norms' own rounding; the absolute term covers flushed subnormals."""
    def gamma(n, u):
        return n * u / (1.0 - n * u)

    return 2.0 * (gamma(d, _UNIT_ROUNDOFF_32) + gamma(d, _UNIT_ROUNDOFF_64)), 4.0 * (d + 2) * _SMALLEST_NORMAL_32


def check_magnitude(max_query_norm: float, max_gallery_norm: float) -> None:
    if max_query_norm * max_gallery_norm > 1e36:
        raise CL2CMError(
            "embedding norms are too large for float32 scores (|q| * |g| > 1e36); L2-normalise the embeddings"
        )


def check_k(k, n_gallery: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_gallery:
        raise CL2CMError(f"k must be an integer in [1, {n_gallery}] (the gallery size), got {k!r}")
    return int(k)
