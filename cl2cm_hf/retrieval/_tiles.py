"""Tiles: their sizes under a memory budget, reusable tile buffers, and the workers that process
them with full-float32 matmuls (the error bound of `_canonical` assumes it)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import torch

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.torch_state import float32_matmul_precision, torch_threads

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of working memory (tiles, chunk copies, candidate buffers) used when none is given."""

_TILE_CAP = 1 << 20  # elements per (query block x gallery chunk) tile: 4 MiB of scores (measured best on 2 cores)
_DEFAULT_QUERY_BLOCK = 1024
_MAX_TILE_SIDE = (1 << 24) - 1
_PARALLEL_WORK_MIN = 1 << 23  # multiply-adds per gallery chunk below which the workers are not used


def _balanced(total: int, size: int) -> int:
    """`size` adjusted so that `total` splits into equal blocks (no tiny last block)."""
    size = max(1, min(total, int(size)))
    blocks = -(-total // size)
    return -(-total // blocks)


def _positive_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CL2CMError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def tile_sizes(n_query: int, n_gallery: int, chunk_size, query_chunk_size, memory_budget, bytes_per_element: int,
               workers: int = 1) -> tuple[int, int]:
    """(query block, gallery chunk) whose tiles, one per worker, fit the memory budget; with several
    workers, query blocks are small enough for every worker to get some of each chunk."""
    chunk_size = _positive_or_none(chunk_size, "chunk_size")
    query_chunk_size = _positive_or_none(query_chunk_size, "query_chunk_size")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget < 2**20:
        raise CL2CMError(f"memory_budget must be at least 1 MiB, got {memory_budget!r}")
    elements = max(1, min(_TILE_CAP, budget // (bytes_per_element * max(1, workers))))
    row_cap = n_query if workers <= 1 else min(_DEFAULT_QUERY_BLOCK, max(64, -(-n_query // (4 * workers))))
    if chunk_size is None and query_chunk_size is None:
        rows = min(n_query, _DEFAULT_QUERY_BLOCK, row_cap)
        cols = _balanced(n_gallery, max(1, elements // rows))
        rows = _balanced(n_query, max(1, min(row_cap, elements // cols)))
    elif chunk_size is None:
        rows = min(n_query, query_chunk_size)
        cols = _balanced(n_gallery, max(1, elements // rows))
    elif query_chunk_size is None:
        cols = min(n_gallery, chunk_size)
        rows = _balanced(n_query, max(1, min(row_cap, elements // cols)))
    else:
        rows, cols = min(n_query, query_chunk_size), min(n_gallery, chunk_size)
    # Counts are sums of 0/1 floats along a tile side: exact below 2**24.
    return min(rows, _MAX_TILE_SIDE), min(cols, _MAX_TILE_SIDE)


class Buffer:
    """A reusable flat buffer handing out contiguous ``(r, c)`` views (allocated once, grown on
    demand: no allocation per tile)."""

    def __init__(self, dtype, device):
        self._dtype, self._device, self._flat = dtype, device, None

    def view(self, rows: int, cols: int) -> torch.Tensor:
        size = rows * cols
        if self._flat is None or self._flat.numel() < size:
            self._flat = torch.empty(size, dtype=self._dtype, device=self._device)
        return self._flat[:size].view(rows, cols)


class TileWorkers:
    """The numeric and threading context of `ranks` and `topk`, entered with ``with``.

    * float32 matmuls stay in full float32 (the error bound assumes it);
    * on CPU, tiles are processed by as many Python threads as torch has intra-op threads, each
      running its torch ops on one thread (torch releases the GIL inside ops). A tile's matmul
      and its element-wise passes then keep every core busy without OpenMP barriers: on a shared
      machine, each barrier of the many short element-wise passes can wait a whole scheduler
      slice for a descheduled thread (measured: evaluation 10x slower on 2 busy cores).

    Both settings are changed through `cl2cm_hf.torch_state` contexts and restored on exit; the
    pool's threads (set to one intra-op thread each) end with the context.
    """

    def __init__(self, device: torch.device):
        self.workers = torch.get_num_threads() if device.type == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None
        self._exit: ExitStack | None = None
        self._states: list[dict] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def __enter__(self) -> TileWorkers:
        with ExitStack() as stack:
            stack.enter_context(float32_matmul_precision("highest"))
            if self.workers > 1:
                stack.enter_context(torch_threads(1))  # the calling thread's own (small) work too
                self._pool = stack.enter_context(ThreadPoolExecutor(
                    self.workers, thread_name_prefix="cl2cm-retrieval", initializer=torch.set_num_threads, initargs=(1,)
                ))
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()  # pool shut down (waits), then threads, then precision restored
        self._pool = None

    def run(self, job, items, work: int) -> None:
        """``job(item)`` for every item, spread over the workers unless the `work` (multiply-adds)
        is too small to pay for the hand-over; returns when all are done."""
        items = list(items)
        if self._pool is None or len(items) == 1 or work < _PARALLEL_WORK_MIN:
            for item in items:
                job(item)
        else:
            for _ in self._pool.map(job, items):
                pass

    def state(self, make) -> dict:
        """This thread's working state (buffers, partial sums), made by `make()` on first use."""
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = make()
            with self._lock:
                self._states.append(state)
        return state

    @property
    def states(self) -> list[dict]:
        return list(self._states)
