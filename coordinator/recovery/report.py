"""What recovery tells: the report of one pass, the state Status reads, and the log lines.

`Action` and `Report` are what a pass did (Admin.Recover's reply; Status's last pass); their
vocabulary (action names as RecoveryAction.action on the wire, and results) is below.
`Status` keeps what Status and ShowTransaction read between passes: counters, each resource as
last scanned, and why each unfinished branch is unfinished. `ActionLog` writes one logfmt line
per action, at INFO the first time a step has a result and at DEBUG while it repeats (a branch
blocked pass after pass).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._inspect import PgPrepared
from ..log import BranchRecord, Decision

__all__ = [
    "COMMIT",
    "COMPLETE",
    "DECIDE_ABORT",
    "DONE",
    "EXPIRE",
    "KILL",
    "PLANNED",
    "ROLLBACK",
    "SCAN",
    "VERIFY",
    "Action",
    "ActionLog",
    "Report",
    "ResourceState",
    "Scanned",
    "Status",
    "iso",
    "log",
]

log = logging.getLogger("twostep.coordinator.recovery")

# Action names (RecoveryAction.action on the wire)
COMMIT = "commit"
ROLLBACK = "rollback"
DECIDE_ABORT = "decide-abort"
KILL = "kill-session"
COMPLETE = "complete"  # the transaction is marked completed
VERIFY = "verify"  # PostgreSQL: did a branch that is gone end the decided way?
SCAN = "scan"
EXPIRE = "expire"  # an abandoned active transaction gets a durable ABORT (`retention`)
# Results: these two, or "failed: ...", "blocked: ...", "heuristic: ...", "waiting: ..."
DONE = "done"
PLANNED = "planned"

_MAX_LINES_REMEMBERED = 100_000  # steps whose last logged result is kept (then forgotten)


def iso(ms: int) -> str:
    """Unix epoch milliseconds as an ISO 8601 UTC time, for the results people read."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


@dataclass(frozen=True)
class Action:
    """One step of a pass: what was (or, in a dry run, would be) done, and how it ended."""

    gtrid: str
    resource: str
    action: str  # commit, rollback, decide-abort, kill-session, complete, verify, scan, expire
    result: str  # done, planned, failed: why, blocked: why, heuristic: why, waiting: why


@dataclass(frozen=True)
class Scanned:
    """What one scan of a resource measured (the metrics read it). `prepared`: this cluster's
    branches listed; `oldest_seen_ms`: when this process's scans first listed the oldest of
    them (None: none listed); `pg`: PostgreSQL, the server's prepared transactions."""

    resource: str
    reachable: bool
    prepared: int = 0
    oldest_seen_ms: int | None = None
    pg: PgPrepared | None = None


@dataclass
class Report:
    """What one pass did; times are unix epoch milliseconds."""

    started_ms: int
    dry_run: bool
    finished_ms: int = 0
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # resources that could not be scanned
    #: gtrids with a branch that could not be finished in this pass (blocked or failed)
    in_doubt: set[str] = field(default_factory=set)
    #: The resources scanned (not in a dry run), by name.
    scans: dict[str, Scanned] = field(default_factory=dict)
    #: The ABORT decisions the pass took (orphans, expired transactions).
    decisions: list[Decision] = field(default_factory=list)


@dataclass(frozen=True)
class ResourceState:
    """A resource as the last scan found it (Status)."""

    name: str
    dialect: str
    target: str
    reachable: bool | None  # None: not scanned yet
    prepared: int  # xids of this cluster listed prepared
    error: str
    scanned_ms: int


class Status:
    """What Status and Admin read between passes; safe to call from any thread.

    `_lock` guards everything here; it is taken after the pass lock (`loop`), only for short
    updates and copies, never while talking to a database or the log.
    """

    def __init__(self, resources: Iterable[ResourceState]):
        self._lock = threading.Lock()
        self._counters: collections.Counter[str] = collections.Counter()
        self._last_report: Report | None = None
        self._resources = {r.name: r for r in resources}
        self._pending: dict[tuple[str, str], str] = {}  # (gtrid, resource) -> why unfinished
        self._orphans: dict[str, list[BranchRecord]] = {}  # as the last whole pass found them

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def last_report(self) -> Report | None:
        with self._lock:
            return self._last_report

    def pass_done(self, report: Report) -> None:
        """A pass that acted (not a dry run, not a settle) ended with `report`."""
        with self._lock:
            self._last_report = report
            self._counters["passes"] += 1

    def resource_states(self) -> list[ResourceState]:
        with self._lock:
            return [self._resources[name] for name in sorted(self._resources)]

    def set_resource(self, state: ResourceState) -> None:
        with self._lock:
            self._resources[state.name] = state

    def in_doubt(self) -> set[str]:
        """gtrids with a branch the last passes could not finish (blocked or failing)."""
        with self._lock:
            return {gtrid for gtrid, _ in self._pending}

    def pending(self, gtrid: str) -> dict[str, str]:
        """Why each unfinished branch of `gtrid` is unfinished, by resource."""
        with self._lock:
            return {res: why for (g, res), why in self._pending.items() if g == gtrid}

    def orphans(self) -> dict[str, list[BranchRecord]]:
        """The prepared branches with no decision, past their deadline, the last whole pass
        found (by gtrid); a pass may have decided ABORT for them since: the log says."""
        with self._lock:
            return dict(self._orphans)

    def set_orphans(self, orphans: dict[str, list[BranchRecord]]) -> None:
        with self._lock:
            self._orphans = orphans

    def remember_pending(self, report: Report, only: str | None) -> None:
        """Keep the branches `report` left blocked or failed: all of them after a whole pass,
        those of `only` after settling one transaction; a dry run changes nothing."""
        pending = {}
        for action in report.actions:
            if action.gtrid and action.result.startswith(("blocked", "failed")):
                pending[(action.gtrid, action.resource)] = action.result
        with self._lock:
            if only is not None:
                self._pending = {k: v for k, v in self._pending.items() if k[0] != only}
                self._pending.update(pending)
            elif not report.dry_run:
                self._pending = pending


class ActionLog:
    """The log lines of actions, and which blocked states are new. Used under the pass lock."""

    def __init__(self) -> None:
        self._reported: dict[tuple[str, str, str], str] = {}  # last result logged per step

    def action(self, gtrid: str, resource: str, action: str, result: str) -> None:
        """Log an action at INFO (WARNING if it failed); a result repeated pass after pass
        (blocked) at DEBUG."""
        key = (gtrid, resource, action)
        repeated = self._reported.get(key) == result
        self._reported[key] = result
        if len(self._reported) > _MAX_LINES_REMEMBERED:
            self._reported.clear()
        level = logging.DEBUG if repeated else logging.INFO
        if result.startswith("failed") and not repeated:
            level = logging.WARNING
        log.log(
            level,
            "recovery action",
            extra={"gtrid": gtrid, "resource": resource, "action": action, "result": result},
        )

    def first_time(self, gtrid: str, resource: str, result: str) -> bool:
        """Whether this blocked state of the branch is new (notes are written once per state)."""
        kind = result.split(";")[0]
        key = (gtrid, resource, "note")
        if self._reported.get(key) == kind:
            return False
        self._reported[key] = kind
        return True

    @staticmethod
    def pass_summary(report: Report) -> None:
        """One line for a pass that did or found anything."""
        if report.actions or report.errors:
            log.info(
                "recovery pass",
                extra={
                    "actions": len(report.actions),
                    "errors": len(report.errors),
                    "in_doubt": len(report.in_doubt),
                    "ms": report.finished_ms - report.started_ms,
                },
            )
