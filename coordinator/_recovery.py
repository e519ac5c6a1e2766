"""Recovery: the coordinator finishes every transaction it decided, and every orphan it finds.

A pass runs at start, every `recovery_interval`, and on demand (Admin.Recover; a dry run plans
without acting). One pass:

1. Scan every registered resource with the client's `ops.recover` (PostgreSQL: also each
   prepared transaction's id, the evidence for heuristic outcomes, see `_inspect`), once this
   coordinator's cluster claim on it is confirmed (`_claim`). A resource that cannot be
   scanned, or whose claim another coordinator holds, is reported and retried with backoff;
   nothing on it is judged.
2. Decided transactions (COMMIT or ABORT) whose phase 2 is not acknowledged, decided more than
   `recovery_grace` ago: each branch still listed prepared is finished the decided way with
   the client's `finish_prepared`. A branch no longer listed has ended: on PostgreSQL its
   transaction status (by the xid8 the client reported with Commit, kept in the log, or seen
   by an earlier scan) says whether it ended the decided way (else: a heuristic outcome,
   noted); where the database cannot tell (MariaDB), a branch of a COMMIT is noted as
   unverified. When every branch is finished, the transaction is marked completed (the same
   end record as the client's Ack).
3. Every other listed xid of this cluster: decided (and past the grace) -> finished the decided
   way. Undecided (no row, or active) and past the deadline inside its gtrid and listed in two
   consecutive scans -> a durable ABORT is decided first (`decide` with commit=False, so a late
   Commit is answered ABORTED; if a Commit won the race, that COMMIT stands and the branch is
   left to its client for the grace), then the branch is rolled back. Xids of other clusters
   and of other XA users are never touched.
4. MySQL/MariaDB: "unknown xid" while XA RECOVER still lists the xid means a live session holds
   the branch. It is reported blocked with the session id the client registered (Begin or
   Enlist, before it prepared; or with Commit/Abort) (confirmed in
   INNODB_TRX); past the deadline + `kill_grace` (and if `kill_live_sessions`), that session
   is KILLed and the branch finished.
5. A branch the decision could not be applied to (finish_prepared's OTHER_WAY: MariaDB had
   rolled it back; or the PostgreSQL evidence above) is a heuristic outcome: a note on the
   transaction.
6. The log is kept bounded (`_retention`): active transactions past their deadline + grace
   with nothing prepared are aborted and completed ("expire"); transactions finished more
   than `retention` ago are pruned.

Failpoint `coordinator.during_recovery` (`twostep.client.tpc.failpoints`): right after a pass
finished a branch (its COMMIT or ROLLBACK PREPARED returned), before the pass records
anything about it; armed to kill, the first branch finished in a pass is the last one.

Nothing is ever dropped: a branch on an unregistered resource is reported blocked ("unknown
resource") on every pass; errors are retried with backoff (doubling from the interval, at most
`_MAX_BACKOFF_MS`; an on-demand pass ignores the backoff). Every action is logged (logfmt) and
counted (`counters()`).

Locks. `_pass_lock` serializes the passes of this process (the loop's and Admin's): it guards
the pass memory (`_suspects`, `_backoff`, `_pg_txids`, `_reported`). Correctness never rests
on it: several coordinator replicas may run passes at once on one log and the same databases;
the decision's unique key in the log makes their ABORT decisions agree, and every phase-2 step
is idempotent. `_state_lock` guards what Status reads (`_counters`, `_last_report`,
`_resources`, `_pending`); it is taken after `_pass_lock`, only for short updates and copies,
never while talking to a database or the log.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twostep.client import InvalidIdentifier, TwostepError
from twostep.client.tpc import BranchOps, Ended, Xid, ended_by_status, finish_prepared, parse_gtrid
from twostep.client.tpc.failpoints import DURING_RECOVERY, failpoint

from . import _inspect, _retention
from ._claim import ClaimConflict, ClusterClaims
from ._log import (
    Ack,
    BranchRecord,
    DecisionLog,
    ListQuery,
    LogUnavailable,
    Note,
    Proposal,
    State,
    TransactionRecord,
)
from ._registry import Resource, ResourceRegistry

__all__ = ["RECOVERY_ABORT_REASON", "Action", "Recovery", "Report", "ResourceState"]

log = logging.getLogger("twostep.coordinator.recovery")

RECOVERY_ABORT_REASON = "recovery: prepared branch orphaned past its deadline"
_MAX_BACKOFF_MS = 60_000
_PAGE = 1000  # decided transactions read from the log at a time
_WORKERS_PER_RESOURCE = 4  # sessions finishing branches on one resource at once
_KILL_PATIENCE_S = 2.0  # after a KILL, how long to retry finishing the detached branch
_MAX_EVIDENCE = 100_000  # PostgreSQL transaction ids remembered for heuristic checks

# Action names (RecoveryAction.action on the wire)
COMMIT = "commit"
ROLLBACK = "rollback"
DECIDE_ABORT = "decide-abort"
KILL = "kill-session"
COMPLETE = "complete"  # the transaction is marked completed
VERIFY = "verify"  # PostgreSQL: did a branch that is gone end the decided way?
SCAN = "scan"
EXPIRE = "expire"  # an abandoned active transaction gets a durable ABORT (`_retention`)
# Results: these two, or "failed: ...", "blocked: ...", "heuristic: ...", "waiting: ..."
DONE = "done"
PLANNED = "planned"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


@dataclass(frozen=True)
class Action:
    """One step of a pass: what was (or, in a dry run, would be) done, and how it ended."""

    gtrid: str
    resource: str
    action: str  # commit, rollback, decide-abort, kill-session, complete, verify, scan
    result: str  # done, planned, failed: why, blocked: why, heuristic: why, waiting: why


@dataclass
class Report:
    """What one pass did."""

    started_ms: int
    dry_run: bool
    finished_ms: int = 0
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # resources that could not be scanned
    #: gtrids with a branch that could not be finished in this pass (blocked or failed)
    in_doubt: set[str] = field(default_factory=set)


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


@dataclass
class _Listing:
    """A resource's prepared xids of this cluster, from one scan."""

    resource: Resource
    xids: set[Xid]
    pg_txids: dict[Xid, int]


@dataclass
class _Work:
    """One branch to finish (or, kind "verify", a branch that is gone: how did it end?)."""

    gtrid: str
    resource: Resource
    xid: Xid
    commit: bool
    deadline_ms: int  # the gtrid's own deadline
    session_id: int = 0  # MySQL: the owner session the client reported (0: unknown)
    kind: str = "finish"
    pg_txid: int = 0  # PostgreSQL: the branch's xid8 (0: unknown)
    # Set by the worker that ran it:
    result: str = ""
    notes: list[Note] = field(default_factory=list)
    killed: int = 0  # the session KILLed to detach the branch


@dataclass
class _Txn:
    """A transaction touched by the pass: its work, and whether to mark it completed."""

    gtrid: str
    complete: bool  # mark completed when all work is done and nothing is blocked
    work: list[_Work] = field(default_factory=list)
    blocked: bool = False


@dataclass
class _Branch:
    """A prepared branch as `finish_prepared` wants it (its PreparedBranch protocol)."""

    connection: Any
    ops: BranchOps
    xid: Xid
    transaction_id: int | None = None
    session: Any = None


@dataclass
class _Backoff:
    failures: int
    not_before_ms: int


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
    ):
        self._log = decision_log
        self._registry = registry
        self._claims = claims
        self._retention_ms = retention_ms
        self._cluster = cluster_id
        self._interval_ms = interval_ms
        self._grace_ms = grace_ms
        self._kill_grace_ms = kill_grace_ms
        self._kill = kill_live_sessions
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        workers = max(4, _WORKERS_PER_RESOURCE * max(1, len(registry)))
        self._pool = ThreadPoolExecutor(min(workers, 32), thread_name_prefix="twostep-recovery")

        self._pass_lock = threading.Lock()  # serializes passes; guards the pass memory below
        self._suspects: set[tuple[str, Xid]] = set()  # undecided xids listed in the last scan
        self._backoff: dict[str, _Backoff] = {}  # by resource name or "gtrid/resource"
        self._pg_txids: dict[tuple[str, Xid], int] = {}  # (resource, xid) -> xid8, seen prepared
        self._reported: dict[tuple[str, str, str], str] = {}  # last result logged per step
        self._dry_run = False  # the pass in progress only plans: nothing is logged as done

        self._state_lock = threading.Lock()  # guards what Status reads (below)
        self._counters: collections.Counter[str] = collections.Counter()
        self._last_report: Report | None = None
        self._resources = {
            r.name: ResourceState(r.name, r.dialect, r.target, None, 0, "", 0) for r in registry
        }
        self._pending: dict[tuple[str, str], str] = {}  # (gtrid, resource) -> why unfinished

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
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        with self._state_lock:
            return dict(self._counters)

    def last_report(self) -> Report | None:
        with self._state_lock:
            return self._last_report

    def resource_states(self) -> list[ResourceState]:
        with self._state_lock:
            return [self._resources[name] for name in sorted(self._resources)]

    def in_doubt(self) -> set[str]:
        """gtrids with a branch the last passes could not finish (blocked or failing)."""
        with self._state_lock:
            return {gtrid for gtrid, _ in self._pending}

    def pending(self, gtrid: str) -> dict[str, str]:
        """Why each unfinished branch of `gtrid` is unfinished, by resource."""
        with self._state_lock:
            return {res: why for (g, res), why in self._pending.items() if g == gtrid}

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
            with self._state_lock:
                self._last_report = report
                self._counters["passes"] += 1
        return report

    def settle(self, gtrid: str, wait: float | None = None) -> Report:
        """Finish the branches of one decided transaction now, ignoring grace and backoff."""
        if not self._pass_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("a recovery pass is running")
        try:
            return self._pass(dry_run=False, eager=True, only=gtrid)
        finally:
            self._pass_lock.release()

    def find_branches(self, gtrid: str) -> tuple[list[BranchRecord], list[str]]:
        """The branches of `gtrid` listed prepared on registered resources; and scan errors."""
        report = Report(self._clock(), dry_run=True)
        listings = self._scan_all(report, eager=True, remember=False)
        found: dict[str, BranchRecord] = {}
        for xid, resources in _by_xid(listings).items():
            if xid.gtrid == gtrid:
                resource = _owner(xid, resources)
                found.setdefault(
                    resource.name, BranchRecord(resource.name, xid.bqual, resource.dialect)
                )
        return list(found.values()), report.errors

    def _pass(self, *, dry_run: bool, eager: bool, only: str | None = None) -> Report:
        self._dry_run = dry_run
        now = self._clock()
        report = Report(now, dry_run)
        listings = self._scan_all(report, eager=eager, remember=not dry_run)
        txns: dict[str, _Txn] = {}
        planned: set[Xid] = set()

        for record in self._decided_incomplete(now, only):
            self._plan_decided(record, listings, txns, planned, report, now, eager)
        orphans = self._plan_listed(listings, txns, planned, report, now, eager, dry_run, only)
        if orphans:
            # Its branches are known only from the scans: completed only if every one ran.
            complete = len(listings) == len(self._registry)
            self._abort_orphans(orphans, txns, report, dry_run, complete)

        work = [w for txn in txns.values() for w in txn.work]
        if dry_run:
            for w in work:
                report.actions.append(Action(w.gtrid, w.resource.name, _verb(w), PLANNED))
            for txn in txns.values():
                if txn.complete and not txn.blocked:
                    report.actions.append(Action(txn.gtrid, "", COMPLETE, PLANNED))
        else:
            self._execute(work)
            self._conclude(txns, report)
        if only is None:
            self._keep_log_bounded(listings, report, now, dry_run)
        report.finished_ms = self._clock()
        self._remember_pending(report, txns, only)
        if not dry_run and only is None:
            # Backoff of branches that are gone (finished elsewhere): forget it.
            resources = set(self._registry.names())
            self._backoff = {
                key: b
                for key, b in self._backoff.items()
                if key in resources or key.split("/")[0] in txns
            }
        if not dry_run and (report.actions or report.errors):
            log.info(
                "recovery pass",
                extra={
                    "actions": len(report.actions),
                    "errors": len(report.errors),
                    "in_doubt": len(report.in_doubt),
                    "ms": report.finished_ms - report.started_ms,
                },
            )
        return report

    # -- 1. scan -------------------------------------------------------------------------------

    def _scan_all(self, report: Report, *, eager: bool, remember: bool) -> dict[str, _Listing]:
        now = self._clock()
        due = []
        for resource in self._registry:
            backoff = self._backoff.get(resource.name)
            if backoff and not eager and now < backoff.not_before_ms:
                report.errors.append(
                    f"{resource.name}: not scanned, retrying at {_iso(backoff.not_before_ms)} "
                    f"after {backoff.failures} failure(s)"
                )
                continue
            due.append(resource)
        futures = {r.name: self._pool.submit(self._scan, r) for r in due}
        listings = {}
        for resource in due:
            try:
                listing = futures[resource.name].result()
            except Exception as exc:
                why = resource.redact(exc)
                report.errors.append(f"{resource.name}: {why}")
                report.actions.append(Action("", resource.name, SCAN, f"failed: {why}"))
                if remember:
                    failures = self._fail(resource.name, now)
                    self._count("scan_errors")
                    self._set_resource(resource, False, 0, why, now)
                    log.warning(
                        "recovery cannot scan a resource",
                        extra={"resource": resource.name, "failures": failures, "error": why},
                    )
                continue
            listings[resource.name] = listing
            if remember:
                self._backoff.pop(resource.name, None)
                self._set_resource(resource, True, len(listing.xids), "", now)
                for xid, txid in listing.pg_txids.items():
                    self._pg_txids[(resource.name, xid)] = txid
                while len(self._pg_txids) > _MAX_EVIDENCE:
                    del self._pg_txids[next(iter(self._pg_txids))]
        return listings

    def _scan(self, resource: Resource) -> _Listing:
        why = self._claims.check(resource)
        if why:
            raise ClaimConflict(why)
        session = resource.connection.acquire()
        try:
            xids = {x for x in resource.ops.recover(session) if self._ours(x)}
            txids = {}
            if resource.dialect == "postgresql" and xids:
                for raw in _inspect.prepared_xids(resource, session):
                    if raw.xid in xids and raw.pg_txid:
                        txids[raw.xid] = raw.pg_txid
        except BaseException:
            resource.connection.release(session, discard=True)
            raise
        resource.connection.release(session)
        return _Listing(resource, xids, txids)

    def _ours(self, xid: Xid) -> bool:
        try:
            return parse_gtrid(xid.gtrid).cluster == self._cluster
        except InvalidIdentifier:
            return False

    # -- 2. decided transactions ---------------------------------------------------------------

    def _decided_incomplete(self, now: int, only: str | None) -> Iterable[TransactionRecord]:
        if only is not None:
            record = self._log.get(only)
            if record is not None and record.state is not State.ACTIVE:
                yield record
            return
        query = ListQuery(
            states=frozenset({State.COMMITTED, State.ABORTED}),
            incomplete_only=True,
            decided_before_ms=now - self._grace_ms + 1,
            limit=_PAGE,
        )
        while True:
            page = self._log.list_transactions(query)
            yield from page
            if len(page) < _PAGE or self._stopping.is_set():
                return
            last = page[-1]
            query = replace(query, after=(last.begun_ms, last.gtrid))

    def _plan_decided(
        self,
        record: TransactionRecord,
        listings: dict[str, _Listing],
        txns: dict[str, _Txn],
        planned: set[Xid],
        report: Report,
        now: int,
        eager: bool,
    ) -> None:
        commit = record.state is State.COMMITTED
        txn = txns.setdefault(record.gtrid, _Txn(record.gtrid, complete=True))
        deadline = _gtrid_deadline(record)
        for branch in record.branches:
            try:
                xid = Xid.of(record.gtrid, branch.bqual)
            except InvalidIdentifier as exc:
                self._blocked(txn, report, branch.resource, _verb_of(commit), f"blocked: {exc}")
                continue
            resource = self._registry.get(branch.resource)
            if resource is None:
                self._blocked(txn, report, branch.resource, _verb_of(commit), UNKNOWN_RESOURCE)
                continue
            if resource.dialect != branch.dialect:
                why = (
                    f"blocked: resource {resource.name} is {resource.dialect} but the branch "
                    f"was prepared on {branch.dialect}"
                )
                self._blocked(txn, report, branch.resource, _verb_of(commit), why)
                continue
            listing = listings.get(resource.name)
            if listing is None:
                why = "failed: resource not scanned in this pass, retrying"
                self._blocked(txn, report, resource.name, _verb_of(commit), why)
                continue
            planned.add(xid)
            if xid in listing.xids:
                work = _Work(record.gtrid, resource, xid, commit, deadline, branch.session_id)
                if self._held_back(work, report, now, eager):
                    txn.blocked = True
                    continue
                txn.work.append(work)
            else:
                # Gone: by whom, which way? Every branch of a COMMIT was prepared, so each is
                # checked (or noted as unverifiable); a branch of an ABORT may never have been
                # prepared, so only one whose transaction id is known is checked.
                txid = branch.transaction_id or self._pg_txids.get((resource.name, xid), 0)
                if commit or txid:
                    txn.work.append(
                        _Work(
                            record.gtrid, resource, xid, commit, deadline, kind=VERIFY, pg_txid=txid
                        )
                    )

    # -- 3. every other listed xid -------------------------------------------------------------

    def _plan_listed(
        self,
        listings: dict[str, _Listing],
        txns: dict[str, _Txn],
        planned: set[Xid],
        report: Report,
        now: int,
        eager: bool,
        dry_run: bool,
        only: str | None,
    ) -> list[tuple[Xid, Resource, int]]:
        """Plan decided xids; return the orphans to abort: (xid, resource, owner session)."""
        orphans = []
        suspects = set()
        for xid, resources in _by_xid(listings).items():
            if xid in planned or (only is not None and xid.gtrid != only):
                continue
            resource = _owner(xid, resources)
            record = self._log.get(xid.gtrid)
            deadline = parse_gtrid(xid.gtrid).deadline_unix_s * 1000
            if record is not None and record.state is not State.ACTIVE:
                assert record.decided_ms is not None
                if only is None and record.decided_ms + self._grace_ms > now:
                    continue  # just decided: its client is finishing it
                commit = record.state is State.COMMITTED
                work = _Work(
                    xid.gtrid, resource, xid, commit, deadline, _owner_session(record, xid)
                )
                txn = txns.setdefault(xid.gtrid, _Txn(xid.gtrid, complete=False))
                if self._held_back(work, report, now, eager):
                    txn.blocked = True
                    continue
                txn.work.append(work)
                continue
            if only is not None:
                continue  # settling a decided transaction never decides another one
            suspects.add((resource.name, xid))
            if now < deadline:
                continue  # an active transaction's prepared branch: its client decides
            if (resource.name, xid) in self._suspects:
                # The session the client registered (Begin / Enlist) holds it, if anyone.
                orphans.append((xid, resource, _owner_session(record, xid)))
            else:
                why = "waiting: past its deadline, undecided; aborted if the next scan lists it"
                report.actions.append(Action(xid.gtrid, resource.name, DECIDE_ABORT, why))
        if not dry_run and only is None:
            scanned = set(listings)
            kept = {s for s in self._suspects if s[0] not in scanned}  # unscanned: keep
            self._suspects = kept | suspects
        return orphans

    def _abort_orphans(
        self,
        orphans: list[tuple[Xid, Resource, int]],
        txns: dict[str, _Txn],
        report: Report,
        dry_run: bool,
        complete: bool,
    ) -> None:
        by_gtrid: dict[str, list[tuple[Xid, Resource, int]]] = collections.defaultdict(list)
        for xid, resource, session_id in orphans:
            by_gtrid[xid.gtrid].append((xid, resource, session_id))
        proposals = [
            Proposal(
                gtrid,
                commit=False,
                branches=tuple(
                    BranchRecord(
                        r.name, x.bqual, r.dialect, sid, self._pg_txids.get((r.name, x), 0)
                    )
                    for x, r, sid in branches
                ),
                reason=RECOVERY_ABORT_REASON,
                fallback_deadline_ms=parse_gtrid(gtrid).deadline_unix_s * 1000,
            )
            for gtrid, branches in by_gtrid.items()
        ]
        if dry_run:
            for p in proposals:
                report.actions.append(Action(p.gtrid, "", DECIDE_ABORT, PLANNED))
                for x, r, sid in by_gtrid[p.gtrid]:
                    deadline = parse_gtrid(x.gtrid).deadline_unix_s * 1000
                    txns.setdefault(p.gtrid, _Txn(p.gtrid, complete)).work.append(
                        _Work(p.gtrid, r, x, False, deadline, sid)
                    )
            return
        try:
            decisions = self._log.decide(proposals)
        except LogUnavailable as exc:
            for p in proposals:
                result = f"failed: the decision log is unavailable ({exc}); retrying"
                report.actions.append(Action(p.gtrid, "", DECIDE_ABORT, result))
                report.in_doubt.add(p.gtrid)
            return
        for decision in decisions:
            if decision.state is not State.ABORTED:
                # A Commit came first: that decision stands, its client finishes the branches.
                result = f"waiting: decided {decision.state.value} meanwhile"
                report.actions.append(Action(decision.gtrid, "", DECIDE_ABORT, result))
                continue
            self._count("decided_abort")
            self._log_action(decision.gtrid, "", DECIDE_ABORT, DONE)
            report.actions.append(Action(decision.gtrid, "", DECIDE_ABORT, DONE))
            txn = txns.setdefault(decision.gtrid, _Txn(decision.gtrid, complete))
            for xid, resource, sid in by_gtrid[decision.gtrid]:
                deadline = parse_gtrid(xid.gtrid).deadline_unix_s * 1000
                txn.work.append(_Work(decision.gtrid, resource, xid, False, deadline, sid))

    def _held_back(self, work: _Work, report: Report, now: int, eager: bool) -> bool:
        """Whether this branch is backing off after failures (then it is reported, not tried)."""
        backoff = self._backoff.get(_key(work))
        if backoff is None or eager or now >= backoff.not_before_ms:
            return False
        why = f"failed: retrying at {_iso(backoff.not_before_ms)} ({backoff.failures} failures)"
        report.actions.append(Action(work.gtrid, work.resource.name, _verb(work), why))
        return True

    def _blocked(self, txn: _Txn, report: Report, resource: str, verb: str, why: str) -> None:
        txn.blocked = True
        report.actions.append(Action(txn.gtrid, resource, verb, why))
        self._log_action(txn.gtrid, resource, verb, why)

    # -- 4. execute ----------------------------------------------------------------------------

    def _execute(self, work: list[_Work]) -> None:
        """Run the work, each resource's share spread over a few sessions, in parallel."""
        by_resource: dict[str, list[_Work]] = collections.defaultdict(list)
        for w in work:
            by_resource[w.resource.name].append(w)
        chunks = [
            items[i::_WORKERS_PER_RESOURCE]
            for items in by_resource.values()
            for i in range(min(_WORKERS_PER_RESOURCE, len(items)))
        ]
        for future in [self._pool.submit(self._run_chunk, chunk) for chunk in chunks]:
            future.result()

    def _run_chunk(self, chunk: list[_Work]) -> None:
        for w in chunk:
            if self._stopping.is_set():
                w.result = "failed: the coordinator is stopping"
                continue
            try:
                self._run(w)
            except Exception as exc:  # a branch's failure never stops the others
                w.result = f"failed: {w.resource.redact(exc)}"

    def _run(self, w: _Work) -> None:
        if w.kind == VERIFY:
            self._verify(w)
            return
        branch = _Branch(w.resource.connection, w.resource.ops, w.xid, w.pg_txid)
        try:
            ended = finish_prepared(branch, commit=w.commit, patience=0.0, quiet=True)
        except TwostepError as exc:
            w.result = f"failed: {w.resource.redact(exc)}"
            return
        if ended is Ended.STILL_PREPARED and w.resource.dialect == "mysql":
            found = self._live_owner(w, branch)
            if found is None:
                return  # w.result says why
            ended = found
        self._finished(w, ended)

    def _finished(self, w: _Work, ended: Ended) -> None:
        decision = "COMMIT" if w.commit else "ABORT"
        where = f"branch {w.xid.bqual} on {w.resource.name}"
        if ended is Ended.STILL_PREPARED:
            w.result = "failed: still prepared (busy, or the session was lost); retrying"
        elif ended is Ended.AS_ASKED:
            w.result = w.result or DONE
            failpoint(DURING_RECOVERY)  # a branch is finished, the pass goes on
        elif ended is Ended.UNVERIFIED:
            text = (
                f"{where} was no longer prepared, and its database cannot tell whether it was "
                f"committed or rolled back (decision: {decision})"
            )
            w.result = f"{DONE} (unverified)"
            w.notes.append(Note(w.gtrid, self._clock(), "unverified", text))
        else:
            way = "rolled back" if w.commit else "committed"
            text = f"{where} was found {way} although the decision is {decision}"
            w.result = f"heuristic: {text}"
            w.notes.append(Note(w.gtrid, self._clock(), "heuristic", text))

    def _verify(self, w: _Work) -> None:
        session = w.resource.connection.acquire()
        try:
            status = w.resource.ops.ended_as(session, w.pg_txid)
        except BaseException:
            w.resource.connection.release(session, discard=True)
            raise
        w.resource.connection.release(session)
        if status == "in progress":  # prepared again? impossible for one gid; look next pass
            w.result = "failed: its transaction is still in progress; retrying"
        else:
            self._finished(w, ended_by_status(status, w.commit))

    def _live_owner(self, w: _Work, branch: _Branch) -> Ended | None:
        """A MySQL branch that is still listed: is a live session holding it? KILL it if due.

        Returns finish_prepared's answer after a KILL, or None with `w.result` saying why.
        """
        resource = w.resource
        session = resource.connection.acquire()
        try:
            if not resource.ops.is_prepared(session, w.xid):
                resource.connection.release(session)
                return Ended.AS_ASKED  # finished meanwhile, by the session that held it
            sid = w.session_id
            if not sid:
                w.result = "blocked: a live session holds it; the client did not report which"
                resource.connection.release(session)
                return None
            if not _inspect.session_holds_transaction(session, sid):
                w.result = f"failed: still attached, but session {sid} holds no transaction"
                resource.connection.release(session)
                return None
            due = w.deadline_ms + self._kill_grace_ms
            if not self._kill:
                w.result = f"blocked: live session {sid} holds it (kill_live_sessions is off)"
            elif self._clock() < due:
                w.result = f"blocked: live session {sid} holds it; KILL due at {_iso(due)}"
            if w.result:
                resource.connection.release(session)
                return None
            killed = _inspect.kill_session(session, sid)
        except BaseException:
            resource.connection.release(session, discard=True)
            raise
        resource.connection.release(session)
        w.killed = sid
        what = f"KILLed session {sid}, which held the branch past deadline + kill grace"
        if not killed:
            what = f"session {sid} held the branch past deadline + kill grace; it ended first"
        w.notes.append(Note(w.gtrid, self._clock(), "kill", f"{resource.name}: {what}"))
        ended = finish_prepared(branch, commit=w.commit, patience=_KILL_PATIENCE_S)
        if ended is Ended.STILL_PREPARED:
            w.result = f"failed: still prepared after the KILL of session {sid}; retrying"
        else:
            w.result = f"{DONE} (after KILL of session {sid})"
        return ended

    # -- 5. conclude ---------------------------------------------------------------------------

    def _conclude(self, txns: dict[str, _Txn], report: Report) -> None:
        now = self._clock()
        notes, acks = [], []
        for txn in txns.values():
            unfinished = False
            for w in txn.work:
                verb = _verb(w)
                if w.killed:
                    self._count("killed")
                    report.actions.append(Action(w.gtrid, w.resource.name, KILL, DONE))
                    self._log_action(w.gtrid, w.resource.name, KILL, f"session {w.killed}")
                report.actions.append(Action(w.gtrid, w.resource.name, verb, w.result))
                self._log_action(w.gtrid, w.resource.name, verb, w.result)
                notes.extend(w.notes)
                if w.result.startswith(DONE):
                    self._backoff.pop(_key(w), None)
                    self._count(_COUNTED[verb])
                    self._pg_txids.pop((w.resource.name, w.xid), None)
                elif w.result.startswith("heuristic"):
                    self._count("heuristic")
                    self._pg_txids.pop((w.resource.name, w.xid), None)
                elif w.result.startswith("blocked"):
                    unfinished = True
                    self._count("blocked")
                    if self._first_time(w):
                        text = f"{w.resource.name}: {w.result}"
                        notes.append(Note(w.gtrid, now, "blocked", text))
                else:
                    unfinished = True
                    self._count("failed")
                    self._fail(_key(w), now)
            if unfinished or txn.blocked:
                report.in_doubt.add(txn.gtrid)
            elif txn.complete:
                acks.append(Ack(txn.gtrid))
                report.actions.append(Action(txn.gtrid, "", COMPLETE, DONE))
                self._log_action(txn.gtrid, "", COMPLETE, DONE)
        try:
            self._log.add_notes(notes)  # durable before the transactions are marked completed
            if acks:
                self._log.record_acks(acks)
                self._log.flush()  # a pass's report is what the log says once it returns
                self._count("completed", len(acks))
        except LogUnavailable as exc:
            log.warning("recovery could not write to the decision log", extra={"error": exc})
            report.errors.append(f"decision log: {exc}")

    # -- 6. the log's size -----------------------------------------------------------------------

    def _keep_log_bounded(
        self, listings: dict[str, _Listing], report: Report, now: int, dry_run: bool
    ) -> None:
        prepared = {xid.gtrid for listing in listings.values() for xid in listing.xids}
        expired = _retention.expire(self._log, now - self._grace_ms, prepared, dry_run=dry_run)
        for gtrid, result in expired:
            report.actions.append(Action(gtrid, "", EXPIRE, result))
            self._log_action(gtrid, "", EXPIRE, result)
            if result == DONE:
                self._count("expired")
        if dry_run:
            return
        try:
            pruned = _retention.prune(self._log, now - self._retention_ms, self._stopping.is_set)
        except LogUnavailable as exc:
            report.errors.append(f"decision log: pruning failed: {exc}")
            return
        if pruned:
            self._count("pruned", pruned)
            log.info("pruned finished transactions", extra={"rows": pruned})

    # -- memory --------------------------------------------------------------------------------

    def _remember_pending(self, report: Report, txns: dict[str, _Txn], only: str | None) -> None:
        pending = {}
        for action in report.actions:
            if action.gtrid and action.result.startswith(("blocked", "failed")):
                pending[(action.gtrid, action.resource)] = action.result
        with self._state_lock:
            if only is not None:
                self._pending = {k: v for k, v in self._pending.items() if k[0] != only}
                self._pending.update(pending)
            elif not report.dry_run:
                self._pending = pending

    def _first_time(self, w: _Work) -> bool:
        """Whether this blocked state of the branch is new (notes are written once per state)."""
        kind = w.result.split(";")[0]
        key = (w.gtrid, w.resource.name, "note")
        if self._reported.get(key) == kind:
            return False
        self._reported[key] = kind
        return True

    def _fail(self, key: str, now: int) -> int:
        backoff = self._backoff.get(key)
        failures = backoff.failures + 1 if backoff else 1
        delay = min(self._interval_ms * 2 ** (failures - 1), _MAX_BACKOFF_MS)
        self._backoff[key] = _Backoff(failures, now + delay)
        return failures

    def _set_resource(
        self, resource: Resource, reachable: bool, prepared: int, error: str, now: int
    ) -> None:
        state = ResourceState(
            resource.name, resource.dialect, resource.target, reachable, prepared, error, now
        )
        with self._state_lock:
            self._resources[resource.name] = state

    def _count(self, name: str, n: int = 1) -> None:
        with self._state_lock:
            self._counters[name] += n

    def _log_action(self, gtrid: str, resource: str, action: str, result: str) -> None:
        """Log an action at INFO; a result repeated pass after pass (blocked) at DEBUG."""
        if self._dry_run:
            return
        key = (gtrid, resource, action)
        repeated = self._reported.get(key) == result
        self._reported[key] = result
        if len(self._reported) > _MAX_EVIDENCE:
            self._reported.clear()
        level = logging.DEBUG if repeated else logging.INFO
        if result.startswith("failed") and not repeated:
            level = logging.WARNING
        log.log(
            level,
            "recovery action",
            extra={"gtrid": gtrid, "resource": resource, "action": action, "result": result},
        )


_COUNTED = {COMMIT: "committed", ROLLBACK: "rolled_back", VERIFY: "verified"}
UNKNOWN_RESOURCE = "blocked: unknown resource (not registered in the coordinator's config)"


def _verb(w: _Work) -> str:
    return VERIFY if w.kind == VERIFY else _verb_of(w.commit)


def _verb_of(commit: bool) -> str:
    return COMMIT if commit else ROLLBACK


def _key(w: _Work) -> str:
    return f"{w.gtrid}/{w.resource.name}"


def _gtrid_deadline(record: TransactionRecord) -> int:
    try:
        return parse_gtrid(record.gtrid).deadline_unix_s * 1000
    except InvalidIdentifier:
        return record.deadline_ms


def _by_xid(listings: dict[str, _Listing]) -> dict[Xid, list[Resource]]:
    """Each listed xid with the resources that list it (MySQL's listing is server-wide)."""
    found: dict[Xid, list[Resource]] = collections.defaultdict(list)
    for listing in listings.values():
        for xid in listing.xids:
            found[xid].append(listing.resource)
    return found


def _owner_session(record: TransactionRecord | None, xid: Xid) -> int:
    """The session the client registered for the branch `xid` (0: none known). By bqual:
    MariaDB lists every database's xids, so the resource that finishes it may be another."""
    if record is None:
        return 0
    return next((b.session_id for b in record.branches if b.bqual == xid.bqual), 0)


def _owner(xid: Xid, resources: list[Resource]) -> Resource:
    """The resource to finish `xid` on: the one its bqual names, if that one lists it."""
    return next((r for r in resources if r.name == xid.bqual), resources[0])
