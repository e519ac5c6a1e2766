"""Client threads that repeat one operation for a fixed time, and what they measured."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Run", "run_threads"]


@dataclass
class Run:
    """One timed run: each successful operation's latency and result, the failures' texts."""

    latencies_ms: list[float]
    results: list[Any]
    errors: list[str]
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Successful operations per second."""
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0


def run_threads(clients: int, seconds: float, operation: Callable[[int], Any]) -> Run:
    """`clients` threads call `operation(worker_index)` in a loop for `seconds`; a call
    started before the end is finished, and the elapsed time runs until the last one is.
    An exception counts as an error (its type and message kept) and the loop goes on."""
    go = threading.Event()
    deadline = 0.0
    latencies: list[list[float]] = [[] for _ in range(clients)]
    results: list[list[Any]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]

    def work(worker: int) -> None:
        go.wait()
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                result = operation(worker)
            except Exception as exc:
                errors[worker].append(f"{type(exc).__name__}: {str(exc)[:160]}")
                continue
            latencies[worker].append((time.perf_counter() - started) * 1000)
            results[worker].append(result)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline = started + seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return Run(
        [ms for worker in latencies for ms in worker],
        [r for worker in results for r in worker],
        [e for worker in errors for e in worker],
        elapsed,
    )
