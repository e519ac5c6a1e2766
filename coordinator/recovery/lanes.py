"""Lanes: one small thread pool per resource, so a database that stops answering holds up
only its own work.

Every call recovery and the Admin service make on a registered resource runs in that
resource's lane. Whoever waits for it waits until a deadline of its own (a pass: its
patience, about one recovery interval; an Admin call: its gRPC deadline) and goes on
without the answer; the call keeps its lane thread until it returns, which the session's
own timeouts bound (the coordinator's `database_timeout`: `_registry`).

A resource is *stuck* while one of its calls has been running for longer than `stuck_after_s`:
its lane takes no new work then (`Stuck`), so a hung database keeps at most its lane's
threads busy, and Status says so (`stuck_since`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Lanes", "Stuck"]

T = TypeVar("T")


class Stuck(Exception):
    """A resource did not answer in time, or its lane is stuck on an earlier call."""


class Lanes:
    """One thread pool of `workers` threads per resource name; thread-safe."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        workers: int,
        stuck_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._pools = {
            name: ThreadPoolExecutor(workers, thread_name_prefix=f"twostep-recovery-{name}")
            for name in names
        }
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._lock = threading.Lock()  # guards _running
        self._running: dict[str, dict[int, float]] = {name: {} for name in self._pools}
        self._ids = itertools.count()

    def stuck_since(self, name: str) -> float | None:
        """When (`clock` time) the oldest call still running on `name` started, if it has
        been running for longer than `stuck_after_s`; else None."""
        with self._lock:
            started = min(self._running.get(name, {}).values(), default=None)
        if started is None or self._clock() - started <= self.stuck_after_s:
            return None
        return started

    def running(self) -> int:
        """How many calls are running, in every lane."""
        with self._lock:
            return sum(map(len, self._running.values()))

    def submit(self, name: str, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` in `name`'s lane. Raises `Stuck` if the lane is stuck."""
        since = self.stuck_since(name)
        if since is not None:
            raise Stuck(f"no answer for {self._clock() - since:.0f} s to an earlier call")
        return self._pools[name].submit(self._timed, name, fn, *args)

    def call(self, name: str, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """`fn(*args)` run in `name`'s lane, waiting at most `timeout` seconds for it.

        Raises what `fn` raises, or `Stuck` (the lane is stuck, or no answer in time: the
        call goes on in the lane, its result unused)."""
        future = self.submit(name, fn, *args)
        try:
            return future.result(timeout=max(0.0, timeout))
        except concurrent.futures.TimeoutError:
            raise Stuck(f"no answer within {timeout:.1f} s") from None

    def shutdown(self) -> None:
        """Start no more work; calls running end by their own timeouts (never waited for)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def _timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        key = next(self._ids)
        with self._lock:
            self._running[name][key] = self._clock()
        try:
            return fn(*args)
        finally:
            with self._lock:
                del self._running[name][key]
