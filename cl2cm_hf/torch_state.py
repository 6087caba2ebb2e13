"""Process-global torch settings (CPU threads, float32 matmul precision), changed only inside a
context that restores the caller's values on exit, and the run's CPU thread policy."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cl2cm_hf.errors import CL2CMError


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


def cpu_threads(setting: str | int) -> int | None:
    """The intra-op thread count of a run's `cpu_threads` setting, for `torch_threads`: a positive
    number as given; "auto" gives None, i.e. torch's own count (OMP_NUM_THREADS, else one per CPU this
    process may run on).

    "auto" does not look at the machine's current load: the thread count changes low bits of the
    weights, so a recipe would give other weights whenever something else happened to run. What keeps
    a run from collapsing next to a busy process is passive OpenMP waiting (`OMP_WAIT_POLICY=PASSIVE`,
    set by `trainer/run.py` before torch starts): a thread that waits at a barrier sleeps instead of
    spinning on the core its descheduled sibling needs. On a machine shared with other jobs, fewer
    threads than free cores (`cpu_threads: 1`) is faster still; see benchmarks/results/speed.md."""
    if setting == "auto":
        return None
    if isinstance(setting, bool) or not str(setting).isdigit() or int(setting) < 1:
        raise CL2CMError(f"cpu_threads={setting!r}; expected 'auto' or a positive number of threads")
    return int(setting)
