"""How every section measures: contenders run interleaved, ratios are medians of per-repeat ratios
(so a shared machine's load drift hits both sides alike), and each result is one row of the page."""

from __future__ import annotations

import gc
import statistics
import threading
import time

ROWS: list[dict] = []  # every result row, in order


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
