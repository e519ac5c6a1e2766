"""The recovery planner: what one pass should do, as a pure function of what it read.

`plan(facts)` takes the listings of the resources scanned in this pass, the log's records of
the transactions concerned, the pass's clock reading and the pass memory (`memory`), and
returns the steps to run, the ABORT decisions to take first, and the findings to report. It
does no I/O, starts no thread and reads no clock: the same facts give the same plan, and it is
tested on plain records (tests/test_recovery_plan.py). Scanning is `scan`'s, running the plan
`act`'s. The rules (docs/design.md, invariants 3 "commit only what was decided" and 4
"nothing stays in doubt"):

Decided transactions (COMMIT or ABORT), phase 2 not acknowledged, decided at least
`grace_ms` ago (the client finishes its own branches meanwhile)
    Each branch listed prepared on its resource is finished the decided way (a step). A
    branch no longer listed has ended: a branch of a COMMIT is verified (how did it end? on
    PostgreSQL its xid8, from the log or an earlier scan, tells; elsewhere it is noted as
    unverified); a branch of an ABORT may never have been prepared, so it is verified only
    when its xid8 is known. When every step is done, the transaction is marked completed.
    A branch that cannot be worked on is a finding, and the transaction stays in doubt: an
    invalid bqual, an unregistered resource (`unknown_resource`; only the client's Ack, sent
    once it rolled back every branch, can say nothing is left there), a resource of another
    dialect than the branch, a resource not scanned in this pass, or a branch backing off
    after failures.
Every other listed xid of this cluster (xids of other clusters and other XA users are never
touched)
    Its transaction decided (and past the grace): finished the decided way, the transaction
    not marked completed (its branches are known only from the scans). Undecided (no row, or
    active) and past the deadline inside its gtrid: an orphan, aborted once two consecutive
    scans listed it (`memory`), together with the gtrid's other listed branches (also those
    listed for the first time): an `OrphanAbort` proposes a durable ABORT first, and only once
    ABORT is the decision in force are its branches rolled back (`act`). Before the deadline,
    its client decides.
Settling one gtrid (`only`, an operator's Resolve)
    Its branches only, grace and backoff ignored; never decides an orphan.

A MySQL/MariaDB listing is server-wide, so one xid may be listed by several resources; it is
finished on the resource its bqual names when that one lists it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from twostep.client import InvalidIdentifier
from twostep.client.tpc import Xid, parse_gtrid

from ..log import BranchRecord, Proposal, State, TransactionRecord
from .memory import Backoff, PassMemory, branch_key
from .report import COMMIT, DECIDE_ABORT, ROLLBACK, VERIFY, Action, iso

__all__ = [
    "NOT_SCANNED",
    "RECOVERY_ABORT_REASON",
    "WAITING_FOR_NEXT_SCAN",
    "Facts",
    "Finding",
    "Listing",
    "OrphanAbort",
    "Plan",
    "Step",
    "TxnPlan",
    "is_ours",
    "listed_branches",
    "plan",
    "prepared_orphans",
    "resources_due",
    "unknown_resource",
]

RECOVERY_ABORT_REASON = "recovery: prepared branch orphaned past its deadline"


def unknown_resource(name: str) -> str:
    """Why a branch on an unregistered resource is blocked, and what an operator does."""
    return (
        f"blocked: resource {name} is not registered in the coordinator's config: add "
        f"[resources.{name}] (the name the application gives that connection) and the next "
        "pass finishes the branch"
    )


NOT_SCANNED = "failed: resource not scanned in this pass, retrying"
WAITING_FOR_NEXT_SCAN = "waiting: past its deadline, undecided; aborted if the next scan lists it"


@dataclass(frozen=True)
class Listing:
    """One resource's prepared xids of this cluster, from one scan.

    `pg_txids`: PostgreSQL, the transaction id (xid8) of each listed xid, where known.
    """

    resource: str
    xids: frozenset[Xid]
    pg_txids: Mapping[Xid, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Facts:
    """Everything a plan depends on; times are unix epoch milliseconds."""

    now_ms: int
    cluster: str  # this coordinator's cluster id: xids of other clusters are never touched
    resources: Mapping[str, str]  # the registered resources: name -> dialect
    listings: Mapping[str, Listing]  # by resource name: the resources scanned in this pass
    #: The log's decided transactions whose phase 2 is not acknowledged (settling: the one).
    decided: Sequence[TransactionRecord]
    #: The log's rows of the other listed gtrids; a gtrid absent here has no row.
    records: Mapping[str, TransactionRecord]
    memory: PassMemory
    grace_ms: int
    eager: bool = False  # ignore the backoff (a pass an operator asked for)
    only: str | None = None  # settle this gtrid alone


@dataclass(frozen=True)
class Step:
    """One branch to finish the decided way, or (`verify`) one that is gone: how did it end?"""

    gtrid: str
    resource: str
    xid: Xid
    commit: bool  # the decision: COMMIT (True) or ABORT
    deadline_ms: int  # the gtrid's own deadline
    session_id: int = 0  # MySQL: the owner session the client reported (0: unknown)
    verify: bool = False
    pg_txid: int = 0  # PostgreSQL: the branch's xid8 (0: unknown)

    @property
    def verb(self) -> str:
        """The step's action name in a report."""
        if self.verify:
            return VERIFY
        return COMMIT if self.commit else ROLLBACK

    @property
    def key(self) -> str:
        return branch_key(self.gtrid, self.resource)


@dataclass
class TxnPlan:
    """A transaction the pass works on: its steps, and whether to mark it completed."""

    gtrid: str
    complete: bool  # mark completed once every step is done and nothing is blocked
    steps: list[Step] = field(default_factory=list)
    blocked: bool = False  # a branch is left for a later pass: in doubt, not completed


@dataclass(frozen=True)
class OrphanAbort:
    """Decide ABORT for an orphan (`proposal`); only if ABORT is then in force, run `steps`.

    `complete`: its branches are known only from the scans, so it is marked completed only
    when every registered resource was scanned in this pass.
    """

    proposal: Proposal
    steps: tuple[Step, ...]
    complete: bool


@dataclass(frozen=True)
class Finding:
    """A result the plan reached without acting. `logged`: a branch blocked or not scanned
    (a log line; an operator may have to act); not logged: a branch backing off, or an orphan
    waiting for the next scan (reported only; they resolve by themselves)."""

    action: Action
    logged: bool


@dataclass
class Plan:
    """What a pass does, in this order: report the findings, take the orphans' ABORT
    decisions, run the steps (those of `txns`, then those of the aborted orphans)."""

    findings: list[Finding]
    txns: dict[str, TxnPlan]  # by gtrid, in the order planned
    aborts: list[OrphanAbort]
    #: The pass memory's suspects after this pass (unchanged when settling one gtrid).
    suspects: frozenset[tuple[str, Xid]]


def is_ours(xid: Xid, cluster: str) -> bool:
    """Whether `xid` is a branch of this cluster's (never of another cluster or XA user)."""
    try:
        return parse_gtrid(xid.gtrid).cluster == cluster
    except InvalidIdentifier:
        return False


def resources_due(
    names: Iterable[str], backoff: Mapping[str, Backoff], now_ms: int, eager: bool
) -> tuple[list[str], list[str]]:
    """The resources to scan in this pass; and an error line for each one skipped because it
    is backing off after failed scans (an eager pass skips none)."""
    due, skipped = [], []
    for name in names:
        b = backoff.get(name)
        if b and not eager and now_ms < b.not_before_ms:
            skipped.append(
                f"{name}: not scanned, retrying at {iso(b.not_before_ms)} "
                f"after {b.failures} failure(s)"
            )
        else:
            due.append(name)
    return due, skipped


def listed_branches(
    gtrid: str, listings: Mapping[str, Listing], resources: Mapping[str, str]
) -> list[BranchRecord]:
    """The branches of `gtrid` the listings show prepared, one per resource that finishes it."""
    found: dict[str, BranchRecord] = {}
    for xid, names in _by_xid(listings).items():
        if xid.gtrid == gtrid:
            name = _owner(xid, names)
            found.setdefault(name, BranchRecord(name, xid.bqual, resources[name]))
    return list(found.values())


def prepared_orphans(
    suspects: Iterable[tuple[str, Xid]], resources: Mapping[str, str], now_ms: int
) -> dict[str, list[BranchRecord]]:
    """The suspects past their gtrid's deadline, by gtrid: prepared branches with no decision
    whose client is gone (`TxnState.ORPHANED` until recovery decides ABORT)."""
    found: dict[str, list[BranchRecord]] = collections.defaultdict(list)
    for resource, xid in sorted(suspects, key=lambda s: (s[1].gtrid, s[0])):
        if parse_gtrid(xid.gtrid).deadline_unix_s * 1000 <= now_ms and resource in resources:
            found[xid.gtrid].append(BranchRecord(resource, xid.bqual, resources[resource]))
    return dict(found)


def plan(facts: Facts) -> Plan:
    """The plan of one pass (see the module docstring). Pure: no I/O, no clock, no threads."""
    planning = _Planning(facts)
    for record in facts.decided:
        planning.decided(record)
    aborts = planning.aborts(planning.listed())
    return Plan(planning.findings, planning.txns, aborts, planning.suspects)


class _Planning:
    """The state of one `plan` call."""

    def __init__(self, facts: Facts):
        self.facts = facts
        self.findings: list[Finding] = []
        self.txns: dict[str, TxnPlan] = {}
        self.planned: set[Xid] = set()  # xids of decided records, judged by their record
        self.suspects = facts.memory.suspects
        self.records = dict(facts.records) | {r.gtrid: r for r in facts.decided}

    def decided(self, record: TransactionRecord) -> None:
        f = self.facts
        if not self._settled(record) or (f.only is not None and record.gtrid != f.only):
            return
        commit = record.state is State.COMMITTED
        txn = self.txns.setdefault(record.gtrid, TxnPlan(record.gtrid, complete=True))
        deadline = _gtrid_deadline(record)
        verb = COMMIT if commit else ROLLBACK
        for branch in record.branches:
            try:
                xid = Xid.of(record.gtrid, branch.bqual)
            except InvalidIdentifier as exc:
                self._block(txn, branch.resource, verb, f"blocked: {exc}")
                continue
            dialect = f.resources.get(branch.resource)
            if dialect is None:
                self._block(txn, branch.resource, verb, unknown_resource(branch.resource))
                continue
            if dialect != branch.dialect:
                why = (
                    f"blocked: resource {branch.resource} is {dialect} but the branch "
                    f"was prepared on {branch.dialect}"
                )
                self._block(txn, branch.resource, verb, why)
                continue
            listing = f.listings.get(branch.resource)
            if listing is None:
                self._block(txn, branch.resource, verb, NOT_SCANNED)
                continue
            self.planned.add(xid)
            session = xid.session_id or branch.session_id
            step = Step(record.gtrid, branch.resource, xid, commit, deadline, session)
            if xid in listing.xids:
                self._add(txn, step)
                continue
            # Gone: by whom, which way? Every branch of a COMMIT was prepared, so each is
            # checked (or noted as unverifiable); a branch of an ABORT may never have been
            # prepared, so only one whose transaction id is known is checked.
            txid = branch.transaction_id or self._evidence(branch.resource, xid)
            if commit or txid:
                txn.steps.append(
                    Step(record.gtrid, branch.resource, xid, commit, deadline, 0, True, txid)
                )

    def listed(self) -> list[tuple[Xid, str, int]]:
        """Plan the other listed xids; the orphans to abort: (xid, resource, owner session)."""
        f = self.facts
        orphans = []
        waiting: list[tuple[Xid, str, int]] = []  # past the deadline, first sighting
        suspects = set()
        for xid, names in _by_xid(f.listings).items():
            if xid in self.planned or not is_ours(xid, f.cluster):
                continue
            if f.only is not None and xid.gtrid != f.only:
                continue
            resource = _owner(xid, names)
            record = self.records.get(xid.gtrid)
            deadline = parse_gtrid(xid.gtrid).deadline_unix_s * 1000
            if record is not None and record.state is not State.ACTIVE:
                if not self._settled(record):
                    continue  # just decided: its client is finishing it
                commit = record.state is State.COMMITTED
                txn = self.txns.setdefault(xid.gtrid, TxnPlan(xid.gtrid, complete=False))
                session = _owner_session(record, xid)
                self._add(txn, Step(xid.gtrid, resource, xid, commit, deadline, session))
                continue
            if f.only is not None:
                continue  # settling a decided transaction never decides another one
            suspects.add((resource, xid))
            if f.now_ms < deadline:
                continue  # an active transaction's prepared branch: its client decides
            # The session the client registered (Begin / Enlist) holds it, if anyone.
            branch = (xid, resource, _owner_session(record, xid))
            if (resource, xid) in f.memory.suspects:
                orphans.append(branch)
            else:
                waiting.append(branch)
        # A gtrid aborted for one branch takes its other listed branches along, also those on
        # their first sighting: the ABORT is the whole transaction's, and names all of them.
        aborted = {xid.gtrid for xid, _, _ in orphans}
        for branch in waiting:
            xid, resource, _ = branch
            if xid.gtrid in aborted:
                orphans.append(branch)
            else:
                action = Action(xid.gtrid, resource, DECIDE_ABORT, WAITING_FOR_NEXT_SCAN)
                self.findings.append(Finding(action, logged=False))
        if f.only is None:
            unscanned = {s for s in f.memory.suspects if s[0] not in f.listings}  # kept
            self.suspects = frozenset(unscanned | suspects)
        return orphans

    def aborts(self, orphans: list[tuple[Xid, str, int]]) -> list[OrphanAbort]:
        """One ABORT proposal per orphaned gtrid, with the rollbacks that follow it."""
        f = self.facts
        by_gtrid: dict[str, list[tuple[Xid, str, int]]] = collections.defaultdict(list)
        for orphan in orphans:
            by_gtrid[orphan[0].gtrid].append(orphan)
        complete = set(f.resources) <= set(f.listings)
        aborts = []
        for gtrid, branches in by_gtrid.items():
            deadline = parse_gtrid(gtrid).deadline_unix_s * 1000
            records = tuple(
                BranchRecord(r, x.bqual, f.resources[r], sid, self._evidence(r, x))
                for x, r, sid in branches
            )
            proposal = Proposal(gtrid, False, records, RECOVERY_ABORT_REASON, deadline)
            steps = tuple(Step(gtrid, r, x, False, deadline, sid) for x, r, sid in branches)
            aborts.append(OrphanAbort(proposal, steps, complete))
        return aborts

    def _settled(self, record: TransactionRecord) -> bool:
        """Decided, and (unless settling it) at least the grace ago."""
        if record.state is State.ACTIVE or record.decided_ms is None:
            return False
        f = self.facts
        return f.only == record.gtrid or record.decided_ms + f.grace_ms <= f.now_ms

    def _evidence(self, resource: str, xid: Xid) -> int:
        listing = self.facts.listings.get(resource)
        txid = listing.pg_txids.get(xid, 0) if listing is not None else 0
        return txid or self.facts.memory.evidence.get((resource, xid), 0)

    def _add(self, txn: TxnPlan, step: Step) -> None:
        """Add the step, unless the branch is backing off after failures (then a finding)."""
        f = self.facts
        b = f.memory.backoff.get(step.key)
        if b is None or f.eager or f.now_ms >= b.not_before_ms:
            txn.steps.append(step)
            return
        why = f"failed: retrying at {iso(b.not_before_ms)} ({b.failures} failures)"
        action = Action(step.gtrid, step.resource, step.verb, why)
        self.findings.append(Finding(action, logged=False))
        txn.blocked = True

    def _block(self, txn: TxnPlan, resource: str, verb: str, why: str) -> None:
        txn.blocked = True
        self.findings.append(Finding(Action(txn.gtrid, resource, verb, why), logged=True))


def _gtrid_deadline(record: TransactionRecord) -> int:
    try:
        return parse_gtrid(record.gtrid).deadline_unix_s * 1000
    except InvalidIdentifier:
        return record.deadline_ms


def _by_xid(listings: Mapping[str, Listing]) -> dict[Xid, list[str]]:
    """Each listed xid with the resources that list it (MySQL's listing is server-wide)."""
    found: dict[Xid, list[str]] = collections.defaultdict(list)
    for name, listing in listings.items():
        for xid in sorted(listing.xids, key=lambda x: (x.gtrid, x.bqual)):
            found[xid].append(name)
    return found


def _owner(xid: Xid, names: list[str]) -> str:
    """The resource to finish `xid` on: the one its bqual names, if that one lists it."""
    return xid.resource if xid.resource in names else names[0]


def _owner_session(record: TransactionRecord | None, xid: Xid) -> int:
    """The session that holds the branch `xid` (0: none known): named in its bqual (a MySQL
    branch), else as the client reported it with Commit or Abort. By bqual, not by resource:
    MariaDB lists every database's xids, so the resource that finishes it may be another."""
    if xid.session_id or record is None:
        return xid.session_id
    return next((b.session_id for b in record.branches if b.bqual == xid.bqual), 0)
