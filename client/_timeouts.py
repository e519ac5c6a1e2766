"""A transaction's timeout: checked once, where a user gives it.

Every lock wait and idle bound of its branches derives from it (PostgreSQL's
`lock_timeout` takes at most 2^31-1 ms, about 24.8 days), and a coordinator never grants more
than its `max_timeout` (at most 86,400 s, like this bound).
"""

from __future__ import annotations

import math

__all__ = ["MAX_TIMEOUT_S", "check_timeout"]

MAX_TIMEOUT_S = 86_400.0


def check_timeout(value: object) -> float:
    """`value` as seconds; `ValueError` unless it is a number (not a bool), more than 0 and
    at most `MAX_TIMEOUT_S`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:  # type: ignore[arg-type]
        raise ValueError(
            f"timeout must be a number of seconds, more than 0 and at most {MAX_TIMEOUT_S:g}, "
            f"not {value!r}"
        )
    return float(value)  # type: ignore[arg-type]
