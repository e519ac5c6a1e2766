"""A clock for an in-process coordinator (`CoordinatorServer(clock=...)`) in tests."""

from __future__ import annotations

import time

__all__ = ["FakeClock"]


class FakeClock:
    """Unix milliseconds that move only when told to."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms
