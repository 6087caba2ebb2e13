"""Process-global torch settings (CPU threads, float32 matmul precision), changed only inside a
context that restores the caller's values on exit."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with `num_threads` intra-op threads (None: unchanged)."""
    previous = torch.get_num_threads()
    if num_threads is not None and num_threads != previous:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextmanager
def float32_matmul_precision(precision: str) -> Iterator[None]:
    """Run the block with `torch.set_float32_matmul_precision(precision)`."""
    previous = torch.get_float32_matmul_precision()
    if precision != previous:
        torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        if torch.get_float32_matmul_precision() != previous:
            torch.set_float32_matmul_precision(previous)
