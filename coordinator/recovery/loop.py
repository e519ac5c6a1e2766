"""`Recovery`: the recovery loop and its passes, one per coordinator process.

A pass runs at start, every `interval_ms`, and on demand (Admin.Recover; a dry run plans
without acting; Admin.Resolve settles one gtrid). One pass:

1. Scan (`scan`) the registered resources not backing off after failed scans: their
   prepared xids of this cluster. A resource that cannot be scanned, or whose cluster claim
   another coordinator holds, is reported and retried with backoff; nothing on it is judged.
   Then read the log: decided transactions not acknowledged, and the rows of listed gtrids.
2. Plan (`plan`): a pure function of what was read, the clock and the pass memory.
3. Act (`act`): decide the orphans' ABORT, finish the branches, KILL a live MariaDB session
   that holds a branch past its deadline + kill grace, mark finished transactions completed.
4. Keep the log bounded (`retention`): expire abandoned active transactions, prune old ones.
5. Report (`report`): the pass's `Report`, counters, the resources' state, the log lines;
   and `on_report` (the metrics) gets every report of a pass that acted.

Isolation. Every database call runs in its resource's lane (`lanes`); a pass waits for its
scans, then for its steps, at most its patience (one recovery interval, at least
`MIN_PATIENCE_MS`) each, and goes on without what did not answer: a resource that hangs
delays no other resource's work by more than that, is reported stuck ("stuck: ..." in its
Status, its steps failed and retried) and is given no new work until its calls return (the
sessions' timeouts bound them: `_registry`).

Nothing is ever dropped: a branch on an unregistered resource is reported blocked ("unknown
resource") on every pass; errors are retried with backoff (doubling from the interval, at
most `memory.MAX_BACKOFF_MS`; an on-demand pass ignores the backoff).

Locks. `_pass_lock` serializes the passes of this process (the loop's and Admin's): it
guards the pass memory (`memory.PassMemory`) and the action log's memory. Correctness never
rests on it: several coordinator replicas may run passes at once on one log and the same
databases; the decision's unique key in the log makes their ABORT decisions agree, and every
phase-2 step is idempotent. `Status` has its own lock, taken after `_pass_lock`, only for
short updates and copies.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .._claim import ClusterClaims
from .._registry import Resource, ResourceRegistry
from ..log import BranchRecord, Decision, DecisionLog, LogUnavailable, State
from . import retention
from .act import WORKERS_PER_RESOURCE, Actor
from .lanes import Lanes
from .memory import PassMemory
from .plan import Facts, Listing, listed_branches, plan, prepared_orphans, resources_due
from .report import (
    DONE,
    EXPIRE,
    SCAN,
    Action,
    ActionLog,
    Report,
    ResourceState,
    Scanned,
    Status,
    log,
)
from .scan import Scanner, decided_incomplete, records_of

__all__ = ["MIN_PATIENCE_MS", "Recovery"]

T = TypeVar("T")

#: The least a pass waits for a resource's answer, however short the interval: a busy but
#: healthy database is not to be called stuck.
MIN_PATIENCE_MS = 1_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Recovery:
    """The recovery loop and its passes; one per coordinator process."""

    def __init__(
        self,
        decision_log: DecisionLog,
        registry: ResourceRegistry,
        *,
        cluster_id: str,
        interval_ms: int = 5_000,
        grace_ms: int = 10_000,
        kill_grace_ms: int = 30_000,
        kill_live_sessions: bool = True,
        claims: ClusterClaims,
        retention_ms: int,
        clock: Callable[[], int] = _now_ms,
        workers_per_resource: int = WORKERS_PER_RESOURCE,
        on_report: Callable[[Report], None] = lambda report: None,
    ):
        """`on_report` is called with the report of every pass that acted (a dry run does
        not; settling one gtrid does), after the pass."""
        self._log = decision_log
        self._on_report = on_report
        self._registry = registry
        self._retention_ms = retention_ms
        self._cluster = cluster_id
        self._interval_ms = interval_ms
        self._grace_ms = grace_ms
        self._clock = clock
        self._dialects = {r.name: r.dialect for r in registry}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Seconds a pass waits for a resource (see the module docstring).
        self.patience = max(interval_ms, MIN_PATIENCE_MS) / 1000
        self._lanes = Lanes(
            registry.names(), workers=workers_per_resource, stuck_after_s=self.patience
        )

        self._pass_lock = threading.Lock()  # serializes passes; guards the two below
        self._memory = PassMemory()
        self._lines = ActionLog()
        self._status = Status(
            ResourceState(r.name, r.dialect, r.target, None, 0, "", 0) for r in registry
        )
        self._scanner = Scanner(claims, cluster_id, self._lanes)
        self._actor = Actor(
            decision_log=decision_log,
            registry=registry,
            memory=self._memory,
            status=self._status,
            lines=self._lines,
            lanes=self._lanes,
            clock=clock,
            stopping=self._stopping,
            interval_ms=interval_ms,
            kill_grace_ms=kill_grace_ms,
            kill_live_sessions=kill_live_sessions,
            workers_per_resource=workers_per_resource,
        )

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run a pass now (in the background) and then every interval, until `stop`."""
        self._thread = threading.Thread(target=self._loop, name="twostep-recovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; a pass in progress gives up at its next branch."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._lanes.shutdown()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_pass()
            except Exception as exc:  # the loop must survive anything one pass runs into
                # No traceback: it would repeat a driver's message, which could hold a secret.
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                log.error(
                    "recovery pass failed; the next one retries",
                    extra={
                        "error": self._registry.redact(f"{type(exc).__name__}: {exc}"),
                        "at": f"{Path(frame.filename).name}:{frame.lineno}",
                    },
                )
            self._stopping.wait(self._interval_ms / 1000)

    # -- what Status and Admin read ------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return self._status.counters()

    def last_report(self) -> Report | None:
        return self._status.last_report()

    def resource_states(self) -> list[ResourceState]:
        """Each resource as last scanned; one whose lane is stuck right now as unreachable,
        "stuck: ..." (its last scan may be older than the hang)."""
        now = time.monotonic()
        states = []
        for state in self._status.resource_states():
            since = self._lanes.stuck_since(state.name)
            if since is not None:
                why = f"stuck: a call has had no answer for {now - since:.0f} s"
                state = replace(state, reachable=False, error=why)
            states.append(state)
        return states

    def calls_running(self) -> int:
        """Database calls still running (after `stop`: those waiting for a database)."""
        return self._lanes.running()

    def on_resource(self, name: str, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """`fn(*args)` run in resource `name`'s lane, waiting at most `timeout` seconds (for
        Admin calls). Raises what `fn` raises, or `Stuck` (no answer in time, or the lane is
        stuck on an earlier call)."""
        return self._lanes.call(name, fn, *args, timeout=timeout)

    def in_doubt(self) -> set[str]:
        """gtrids with a branch the last passes could not finish (blocked or failing)."""
        return self._status.in_doubt()

    def pending(self, gtrid: str) -> dict[str, str]:
        """Why each unfinished branch of `gtrid` is unfinished, by resource."""
        return self._status.pending(gtrid)

    def orphans(self) -> dict[str, list[BranchRecord]]:
        """Prepared branches with no decision past their deadline, by gtrid (last pass)."""
        return self._status.orphans()

    # -- passes --------------------------------------------------------------------------------

    def run_pass(
        self, *, dry_run: bool = False, eager: bool = False, wait: float | None = None
    ) -> Report:
        """One pass (see the module docstring). `eager`: ignore the backoff (on demand).

        `wait`: seconds to wait for a pass already running (None: as long as it takes);
        `TimeoutError` if it is still running then.
        """
        if not self._pass_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("a recovery pass is running")
        try:
            report = self._pass(dry_run=dry_run, eager=eager)
        finally:
            self._pass_lock.release()
        if not dry_run:
            self._status.pass_done(report)
            self._on_report(report)
        return report

    def settle(self, gtrid: str, wait: float | None = None) -> Report:
        """Finish the branches of one decided transaction now, ignoring grace and backoff."""
        if not self._pass_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("a recovery pass is running")
        try:
            report = self._pass(dry_run=False, eager=True, only=gtrid)
        finally:
            self._pass_lock.release()
        self._on_report(report)
        return report

    def find_branches(
        self, gtrid: str, timeout: float | None = None
    ) -> tuple[list[BranchRecord], list[str]]:
        """The branches of `gtrid` listed prepared on registered resources; and scan errors
        (a resource that did not answer within `timeout` seconds, default the patience, is
        one)."""
        report = Report(self._clock(), dry_run=True)
        patience = self.patience if timeout is None else timeout
        listings = self._scan(
            report, report.started_ms, eager=True, remember=False, patience=patience
        )
        return listed_branches(gtrid, listings, self._dialects), report.errors

    def _pass(self, *, dry_run: bool, eager: bool, only: str | None = None) -> Report:
        now = self._clock()
        report = Report(now, dry_run)
        listings = self._scan(
            report, now, eager=eager, remember=not dry_run, patience=self.patience
        )
        decided = decided_incomplete(
            self._log,
            decided_before_ms=now - self._grace_ms + 1,  # the planner's grace, as a filter
            only=only,
            stop=self._stopping.is_set,
        )
        listed = {x.gtrid for listing in listings.values() for x in listing.xids}
        if only is not None:
            listed &= {only}
        records = records_of(self._log, listed - {r.gtrid for r in decided})
        facts = Facts(
            now_ms=now,
            cluster=self._cluster,
            resources=self._dialects,
            listings=listings,
            decided=decided,
            records=records,
            memory=self._memory,
            grace_ms=self._grace_ms,
            eager=eager,
            only=only,
        )
        the_plan = plan(facts)
        if not dry_run:
            self._memory.suspects = the_plan.suspects
        if not dry_run and only is None:
            self._status.set_orphans(prepared_orphans(the_plan.suspects, self._dialects, now))
        worked_on = self._actor.act(the_plan, report, dry_run=dry_run, patience=self.patience)
        if only is None:
            self._keep_log_bounded(listings, report, now, dry_run)
        report.finished_ms = self._clock()
        self._status.remember_pending(report, only)
        if not dry_run and only is None:
            self._memory.keep_backoff_of(self._dialects, worked_on)
        if not dry_run:
            self._lines.pass_summary(report)
        return report

    def _scan(
        self, report: Report, now: int, *, eager: bool, remember: bool, patience: float
    ) -> dict[str, Listing]:
        """Scan the resources due, waiting at most `patience` seconds; report the failures;
        `remember`: update the pass memory and the resources' state (not for a dry run)."""
        due, skipped = resources_due(self._registry.names(), self._memory.backoff, now, eager)
        report.errors += skipped
        resources = [r for r in self._registry if r.name in due]
        listings, failed, summaries = self._scanner.scan(resources, patience)
        for resource in resources:
            name = resource.name
            if name in failed:
                why = failed[name]
                report.errors.append(f"{name}: {why}")
                report.actions.append(Action("", name, SCAN, f"failed: {why}"))
                if remember:
                    report.scans[name] = Scanned(name, reachable=False)
                    failures = self._memory.fail(name, now, self._interval_ms)
                    self._status.count("scan_errors")
                    self._set_state(resource, False, 0, why, now)
                    log.warning(
                        "recovery cannot scan a resource",
                        extra={"resource": name, "failures": failures, "error": why},
                    )
            elif remember:
                xids = listings[name].xids
                self._memory.succeeded(name)
                self._set_state(resource, True, len(xids), "", now)
                self._memory.remember_txids(name, listings[name].pg_txids)
                oldest = self._memory.listed(name, xids, now)
                report.scans[name] = Scanned(name, True, len(xids), oldest, summaries.get(name))
        return listings

    def _set_state(
        self, resource: Resource, reachable: bool, prepared: int, error: str, now: int
    ) -> None:
        self._status.set_resource(
            ResourceState(
                resource.name, resource.dialect, resource.target, reachable, prepared, error, now
            )
        )

    def _keep_log_bounded(
        self, listings: dict[str, Listing], report: Report, now: int, dry_run: bool
    ) -> None:
        prepared = {xid.gtrid for listing in listings.values() for xid in listing.xids}
        expired = retention.expire(self._log, now - self._grace_ms, prepared, dry_run=dry_run)
        for gtrid, result in expired:
            report.actions.append(Action(gtrid, "", EXPIRE, result))
            if not dry_run:
                self._lines.action(gtrid, "", EXPIRE, result)
            if result == DONE:
                self._status.count("expired")
                decision = Decision(gtrid, State.ABORTED, retention.EXPIRED_REASON, taken=True)
                report.decisions.append(decision)
        if dry_run:
            return
        try:
            pruned = retention.prune(self._log, now - self._retention_ms, self._stopping.is_set)
        except LogUnavailable as exc:
            report.errors.append(f"decision log: pruning failed: {exc}")
            return
        if pruned:
            self._status.count("pruned", pruned)
            log.info("pruned finished transactions", extra={"rows": pruned})
