"""Figures the benchmarks share: nearest-rank percentiles and a process's peak RSS."""

from __future__ import annotations

import contextlib
import math
import threading

import psutil


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


class PeakRSS:
    """Polls a process's RSS in a thread from `begin()` (or `with`) to `stop()`: `start`
    and `peak`, in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def begin(self) -> PeakRSS:
        self.start = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> PeakRSS:
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.stop()
