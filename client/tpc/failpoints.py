"""Named failpoints: a process kills (or stops) itself at an exact step, for fault tests.

Off by default. `TWOSTEP_FAILPOINTS` lists the armed names, comma-separated, each optionally
followed by `=ACTION`; it is read once, at import, so a failpoint that is not armed costs one
membership test of an empty set. Both the client and the coordinator use this module (the
coordinator may import the client, never the reverse: docs/design.md §1).

Actions:

`kill` (the default)
    SIGKILL the own process: no cleanup, no flush, no reply, exactly like a power cut at that
    step (the decision log is as durable as its last fsync; an open database session is
    closed by the kernel, which detaches a prepared MariaDB branch).
`stop`
    SIGSTOP the own process, once (the first time the step is reached; later hits pass): every
    thread freezes, the one at the step before it takes another, with its sessions and sockets
    open, so a test can do something else at exactly that moment (kill a database, cut a
    connection) and then send SIGCONT.

Names (where they sit is the contract the fault tests rely on):

`client.before_prepare`
    `global_transaction()` with two or more branches: every statement of the block ran, the
    gtrid and xids are known, no branch is prepared yet.
`client.between_prepares`
    After the first branch (the first connection the block used) is prepared, before the
    others. Armed, it makes the prepares run one after the other instead of in parallel.
`client.before_commit_request`
    Every branch is prepared and the coordinator was found reachable; Commit is not sent.
`client.after_decision`
    The coordinator answered COMMITTED; phase 2 has not started on any branch.
`client.between_commits`
    After the first branch is committed (phase 2), before the others. Armed, it makes phase 2
    run one branch after the other.
`coordinator.before_decision_fsync`
    In the decision log's writer, in a batch that holds at least one Commit or Abort: after
    every statement of the batch ran, before its COMMIT (the fsync). The batch is lost; no
    caller has been answered.
`coordinator.after_decision_fsync`
    Same batches: after COMMIT returned (the decisions are on disk), before any caller is
    answered. The decisions survive; every caller's RPC fails with a lost connection.
`coordinator.during_recovery`
    In a recovery pass, right after one branch was finished (committed or rolled back as
    decided), before the pass records it or finishes the others.

Batches with only Begins and Acks (which nobody waits for) never hit the decision failpoints.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = [
    "AFTER_DECISION",
    "AFTER_DECISION_FSYNC",
    "BEFORE_COMMIT_REQUEST",
    "BEFORE_DECISION_FSYNC",
    "BEFORE_PREPARE",
    "BETWEEN_COMMITS",
    "BETWEEN_PREPARES",
    "DURING_RECOVERY",
    "KNOWN",
    "armed",
    "failpoint",
    "is_armed",
]

BEFORE_PREPARE = "client.before_prepare"
BETWEEN_PREPARES = "client.between_prepares"
BEFORE_COMMIT_REQUEST = "client.before_commit_request"
AFTER_DECISION = "client.after_decision"
BETWEEN_COMMITS = "client.between_commits"
BEFORE_DECISION_FSYNC = "coordinator.before_decision_fsync"
AFTER_DECISION_FSYNC = "coordinator.after_decision_fsync"
DURING_RECOVERY = "coordinator.during_recovery"
KNOWN = frozenset(
    {
        BEFORE_PREPARE,
        BETWEEN_PREPARES,
        BEFORE_COMMIT_REQUEST,
        AFTER_DECISION,
        BETWEEN_COMMITS,
        BEFORE_DECISION_FSYNC,
        AFTER_DECISION_FSYNC,
        DURING_RECOVERY,
    }
)
_ACTIONS = frozenset({"kill", "stop"})


def _parse(text: str) -> dict[str, str]:
    actions = {}
    for item in text.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            action = action.strip() or "kill"
            if action not in _ACTIONS:
                raise ValueError(f"TWOSTEP_FAILPOINTS: {name}={action}: action is kill or stop")
            actions[name.strip()] = action
    return actions


_ACTION = _parse(os.environ.get("TWOSTEP_FAILPOINTS", ""))
_ARMED = frozenset(_ACTION)
_stopped: set[str] = set()  # `stop` failpoints already hit (they fire once)
_stopped_lock = threading.Lock()  # guards _stopped: two threads may reach one step together


def armed() -> frozenset[str]:
    """The failpoint names this process was started with."""
    return _ARMED


def is_armed(name: str) -> bool:
    """Whether `name` is armed (for a step that must run differently to be hit exactly)."""
    return name in _ARMED


def failpoint(name: str) -> None:
    """Kill (or stop) this process if `name` is armed; otherwise return at once."""
    if _ARMED and name in _ARMED:
        _fire(name)


def _fire(name: str) -> None:
    signum = signal.SIGKILL
    if _ACTION[name] == "stop":
        with _stopped_lock:
            if name in _stopped:
                return
            _stopped.add(name)
        signum = signal.SIGSTOP
    # Straight to fd 2: logging may hold locks or buffers.
    os.write(2, f"failpoint {name} hit: {signum.name} pid {os.getpid()}\n".encode())
    # To this thread, not the process: a process-directed SIGSTOP may be taken by another
    # thread, and this one would run on (a phase-2 step takes a millisecond) until the stop
    # reached it. Sent to the caller, the signal acts before the call returns; both signals
    # still stop or kill every thread of the process.
    signal.pthread_kill(threading.get_ident(), signum)
