"""Named failpoints: the coordinator process kills itself at an exact step, for fault tests.

Off by default. `TWOSTEP_FAILPOINTS` lists the armed names, comma-separated; it is read once,
at import, so a failpoint that is not armed costs one truth test of an empty set. An armed
failpoint sends SIGKILL to its own process: no cleanup, no flush, no reply, exactly like a
power cut at that step (the decision log is as durable as its last fsync, nothing more).

Names (where they sit is the contract the fault tests rely on):

`coordinator.before_decision_fsync`
    In the decision log's writer, in a batch that holds at least one Commit or Abort: after
    every statement of the batch ran, before its COMMIT (the fsync). The batch is lost; no
    caller has been answered.
`coordinator.after_decision_fsync`
    Same batches: after COMMIT returned (the decisions are on disk), before any caller is
    answered. The decisions survive; every caller's RPC fails with a lost connection.

Batches with only Begins and Acks (which nobody waits for) never hit either failpoint.
"""

from __future__ import annotations

import os
import signal

__all__ = ["AFTER_DECISION_FSYNC", "BEFORE_DECISION_FSYNC", "KNOWN", "armed", "failpoint"]

BEFORE_DECISION_FSYNC = "coordinator.before_decision_fsync"
AFTER_DECISION_FSYNC = "coordinator.after_decision_fsync"
KNOWN = frozenset({BEFORE_DECISION_FSYNC, AFTER_DECISION_FSYNC})

_ARMED = frozenset(
    name.strip() for name in os.environ.get("TWOSTEP_FAILPOINTS", "").split(",") if name.strip()
)


def armed() -> frozenset[str]:
    """The failpoint names this process was started with (the client's may be among them)."""
    return _ARMED


def failpoint(name: str) -> None:
    """SIGKILL this process if `name` is armed; otherwise return at once."""
    if _ARMED and name in _ARMED:
        # Straight to fd 2: logging may hold locks or buffers, and nothing may run after this.
        os.write(2, f"failpoint {name} hit: SIGKILL pid {os.getpid()}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
