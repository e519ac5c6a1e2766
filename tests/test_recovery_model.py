"""Hypothesis tests of the recovery planner (coordinator/recovery/plan.py), without databases.

One plan of arbitrary facts: any rows (decided inside and past the grace, active, none), any
listings (MariaDB's server-wide), any pass memory, settling one gtrid or not: the plan commits
only COMMIT decisions, rolls back only ABORT decisions, proposes ABORT only for undecided
gtrids past their deadline on a second sighting (of one of their branches), skips branches
backing off, never judges another cluster's xid, and is a pure function (the same facts, the
same plan; facts unchanged).

Many passes, a model: clients begin, prepare branches, commit, abort, finish phase 2 or die at
random points; Begins may be lost (presumed abort); the clock moves; resources become
unreachable and branches fail to finish (backoff). Recovery passes run the real planner with
the real pass memory on listings of a modelled world: one PostgreSQL database ("orders") and
one MariaDB server whose XA RECOVER is server-wide, shared by two resources ("billing" and
"audit"), plus branches of another cluster and of manual two-phase commit, long past any
deadline. The decision log and acting are modelled in a few lines (first decision wins; a
Commit is COMMITTED only before the deadline). Whatever the interleaving:
- every branch that was committed belongs to a COMMIT decision, every one rolled back to an
  ABORT decision (docs/design.md, invariant 3);
- an orphan's ABORT is proposed only past its gtrid's deadline and after two scans;
- branches of other clusters and other XA users are never touched;
- once every deadline and grace has passed and every resource answers, two passes a grace
  apart leave nothing of this cluster prepared (invariant 4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from test_recovery_plan import BILLING, CLUSTER, GRACE, NOW, ORDERS, gtrid, row

from twostep.client.tpc import Xid, parse_gtrid
from twostep.coordinator.log import BranchRecord, Proposal, State, TransactionRecord
from twostep.coordinator.recovery.memory import MAX_BACKOFF_MS, Backoff, PassMemory, branch_key
from twostep.coordinator.recovery.plan import (
    RECOVERY_ABORT_REASON,
    Facts,
    Listing,
    TxnPlan,
    is_ours,
    plan,
    resources_due,
)

# -- one plan of arbitrary facts -------------------------------------------------------------------

GTRIDS = [
    *(gtrid(NOW + offset, n) for n, offset in enumerate((-60_000, -1_000, 0, 1_000, 60_000))),
    gtrid(NOW - 60_000, 9, cluster="theirs"),
]
NAMES = ["orders", "billing", "audit"]  # audit is a MariaDB resource on billing's server
DIALECTS = {"orders": "postgresql", "billing": "mysql", "audit": "mysql"}
XIDS = [Xid.of(g, name) for g in GTRIDS for name in NAMES]


BRANCH_CHOICES = [
    ORDERS,
    BILLING,
    BranchRecord("audit", "audit", "mysql"),
    BranchRecord("ghost", "ghost", "mysql"),  # not registered
    BranchRecord("orders", "orders", "mysql"),  # another dialect than the resource
]
PAIRS = st.tuples(st.sampled_from(NAMES), st.sampled_from(XIDS))


@st.composite
def any_facts(draw: st.DrawFn) -> Facts:
    """Arbitrary facts: any rows, any listings (MariaDB's shared by billing and audit), any
    memory, settling or not; decided rows inside the grace and active rows included."""
    registered = draw(st.sets(st.sampled_from(NAMES), min_size=1))
    resources = {name: DIALECTS[name] for name in NAMES if name in registered}
    rows = {}
    for g in GTRIDS[:-1]:  # the log never holds another cluster's gtrid
        state = draw(st.sampled_from([None, State.ACTIVE, State.COMMITTED, State.ABORTED]))
        if state is not None:
            branches = draw(st.lists(st.sampled_from(BRANCH_CHOICES), unique=True))
            decided_ms = NOW - draw(st.sampled_from([0, 1, GRACE - 1, GRACE, 60_000]))
            rows[g] = row(g, state, *branches, decided_ms=decided_ms)
    server_wide = frozenset(draw(st.sets(st.sampled_from(XIDS))))  # XA RECOVER of MariaDB
    listings = {}
    for name in sorted(draw(st.sets(st.sampled_from(sorted(registered))))):
        if name == "orders":
            xids = frozenset(draw(st.sets(st.sampled_from(XIDS))))
            txids = {x: draw(st.integers(1, 2**40)) for x in xids}
            listings[name] = Listing(name, xids, txids)
        else:
            listings[name] = Listing(name, server_wide)
    keys = [*NAMES, *(branch_key(g, name) for g in GTRIDS for name in NAMES)]
    backoff = {
        key: Backoff(draw(st.integers(1, 5)), NOW + draw(st.sampled_from([-1, 0, 1, 5_000])))
        for key in draw(st.sets(st.sampled_from(keys)))
    }
    evidence = {pair: 77 for pair in draw(st.sets(PAIRS))}
    # Suspects: mostly what these listings show (a second sighting), some of anything.
    listed_pairs = sorted(
        ((name, x) for name, item in listings.items() for x in item.xids),
        key=lambda pair: (pair[0], pair[1].gtrid, pair[1].bqual),
    )
    seen = draw(st.sets(st.sampled_from(listed_pairs))) if listed_pairs else set()
    memory = PassMemory(frozenset(seen | draw(st.sets(PAIRS, max_size=3))), backoff, evidence)
    only = draw(st.none() | st.sampled_from(GTRIDS))
    if only is None:
        decided = [r for r in rows.values() if r.state is not State.ACTIVE]
    else:
        decided = [rows[only]] if only in rows and rows[only].state is not State.ACTIVE else []
    listed = {x.gtrid for item in listings.values() for x in item.xids}
    others = {g: r for g, r in rows.items() if g in listed and r not in decided}
    eager = draw(st.booleans())
    return Facts(NOW, CLUSTER, resources, listings, decided, others, memory, GRACE, eager, only)


@settings(max_examples=400, deadline=None)
@given(any_facts())
def test_the_plan_commits_only_commit_decisions_aborts_only_past_deadline_and_only_ours(f: Facts):
    before = copy.deepcopy(f)
    p = plan(f)
    assert f == before, "the planner changed its facts"
    assert plan(f) == p, "the same facts gave another plan"
    records = {**f.records, **{r.gtrid: r for r in f.decided}}

    for txn in p.txns.values():
        record = records[txn.gtrid]
        assert record.state is not State.ACTIVE
        settled = f.only == txn.gtrid or record.decided_ms + GRACE <= NOW
        assert settled, f"{txn.gtrid} is within its grace: its client finishes it"
        for s in txn.steps:
            assert is_ours(s.xid, CLUSTER) and s.xid.gtrid == txn.gtrid
            assert s.commit is (record.state is State.COMMITTED), f"{s} against {record}"
            assert s.resource in f.listings and s.resource in f.resources
            assert (s.xid in f.listings[s.resource].xids) is not s.verify
            b = f.memory.backoff.get(s.key)
            assert f.eager or b is None or b.not_before_ms <= NOW or s.verify

    for abort in p.aborts:
        g = abort.proposal.gtrid
        assert f.only is None and is_ours(Xid.of(g, "x"), CLUSTER)
        assert g not in records or records[g].state is State.ACTIVE, "decided: never re-decided"
        assert parse_gtrid(g).deadline_unix_s * 1000 <= NOW, "aborted before its deadline"
        assert not abort.proposal.commit and abort.proposal.reason == RECOVERY_ABORT_REASON
        # Decided on a second sighting of one branch; the gtrid's other listed branches go
        # with it (the ABORT is the transaction's).
        assert any((s.resource, s.xid) in f.memory.suspects for s in abort.steps)
        for s in abort.steps:
            assert s.verb == "rollback" and s.xid.gtrid == g
            assert s.xid in f.listings[s.resource].xids
    assert not set(p.txns) & {a.proposal.gtrid for a in p.aborts}

    for finding in p.findings:
        assert finding.action.gtrid != GTRIDS[-1], "another cluster's gtrid was judged"
        assert f.only is None or finding.action.gtrid == f.only
    assert all(is_ours(x, CLUSTER) for _, x in p.suspects - f.memory.suspects)
    if f.only is not None:
        assert p.suspects == f.memory.suspects
        assert set(p.txns) <= {f.only}


# -- many passes -----------------------------------------------------------------------------------

START_MS = NOW
GRACE_MS = 1_000
INTERVAL_MS = 500
SERVER = {"orders": "pg", "billing": "maria", "audit": "maria"}


def _gtrid(cluster: str, deadline_ms: int, n: int) -> str:
    return gtrid(-(-deadline_ms // 1000) * 1000, n, cluster)  # the deadline rounded up


@dataclass
class Row:
    """The log's row of one gtrid."""

    gtrid: str
    state: State
    deadline_ms: int
    begun_ms: int
    decided_ms: int | None = None
    branches: tuple[BranchRecord, ...] = ()
    completed: bool = False

    def record(self) -> TransactionRecord:
        completed_ms = self.decided_ms if self.completed else None
        return TransactionRecord(
            self.gtrid,
            self.state,
            self.begun_ms,
            self.deadline_ms,
            self.decided_ms,
            "",
            self.branches,
            completed_ms,
        )


@dataclass
class Client:
    gtrid: str
    resources: tuple[str, ...]
    prepared: set[str] = field(default_factory=set)
    decision: State | None = None
    alive: bool = True


class RecoveryModel(RuleBasedStateMachine):
    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.now = START_MS
        self.log: dict[str, Row] = {}
        self.world: dict[str, set[Xid]] = {"pg": set(), "maria": set()}
        self.fate: dict[Xid, State] = {}  # what happened to each finished branch
        self.memory = PassMemory()
        self.count = 0
        long_ago = START_MS - 3_600_000
        self.foreign = {
            ("pg", Xid(_gtrid("other", long_ago, 1), "orders")),
            ("maria", Xid(_gtrid("other", long_ago, 2), "billing")),
            ("pg", Xid(_gtrid("local", long_ago, 3), "orders")),  # manual two-phase commit
        }
        for server, xid in self.foreign:
            self.world[server].add(xid)

    # -- the modelled decision log -------------------------------------------------------------

    def _decide(self, proposal: Proposal) -> State:
        row = self.log.get(proposal.gtrid)
        if row is None:  # unknown: presumed abort, whatever was asked
            row = Row(proposal.gtrid, State.ABORTED, proposal.fallback_deadline_ms, self.now)
            row.decided_ms, row.branches = self.now, proposal.branches
            self.log[proposal.gtrid] = row
        elif row.state is State.ACTIVE:
            commit = proposal.commit and self.now < row.deadline_ms
            row.state = State.COMMITTED if commit else State.ABORTED
            row.decided_ms = self.now
            row.branches = proposal.branches or row.branches
        return row.state

    def _finish(self, resource: str, xid: Xid, state: State) -> None:
        server = self.world[SERVER[resource]]
        if xid in server:
            server.remove(xid)
            self.fate[xid] = state

    # -- clients -------------------------------------------------------------------------------

    @rule(
        target=clients,
        timeout_ms=st.sampled_from([1, 800, 3_000, 30_000]),
        resources=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
        logged=st.booleans(),
    )
    def begin(self, timeout_ms: int, resources: list[str], logged: bool) -> Client:
        self.count += 1
        g = _gtrid(CLUSTER, self.now + timeout_ms, self.count)
        deadline = parse_gtrid(g).deadline_unix_s * 1000
        if logged:  # else the Begin was lost in a crash (it is not durable)
            self.log[g] = Row(g, State.ACTIVE, deadline, self.now)
        return Client(g, tuple(sorted(resources)))

    @rule(client=clients, data=st.data())
    def prepare(self, client: Client, data: st.DataObject) -> None:
        todo = [r for r in client.resources if r not in client.prepared]
        if client.alive and client.decision is None and todo:
            resource = data.draw(st.sampled_from(todo))
            client.prepared.add(resource)
            self.world[SERVER[resource]].add(Xid.of(client.gtrid, resource))

    @rule(client=clients)
    def commit(self, client: Client) -> None:
        if (
            client.alive
            and client.decision is None
            and len(client.prepared) == len(client.resources)
        ):
            branches = tuple(BranchRecord(r, r, DIALECTS[r]) for r in client.resources)
            deadline = parse_gtrid(client.gtrid).deadline_unix_s * 1000
            proposal = Proposal(client.gtrid, True, branches, "", deadline)
            client.decision = self._decide(proposal)

    @rule(client=clients)
    def abort(self, client: Client) -> None:
        if client.alive and client.decision is None:
            deadline = parse_gtrid(client.gtrid).deadline_unix_s * 1000
            client.decision = self._decide(Proposal(client.gtrid, False, (), "no", deadline))

    @rule(client=clients)
    def phase_2(self, client: Client) -> None:
        """The client finishes its prepared branches the decided way, then acknowledges."""
        if client.alive and client.decision is not None:
            for resource in sorted(client.prepared):
                self._finish(resource, Xid.of(client.gtrid, resource), client.decision)
            if client.gtrid in self.log:
                self.log[client.gtrid].completed = True
            client.alive = False  # done

    @rule(client=clients)
    def die(self, client: Client) -> None:
        client.alive = False

    @rule(ms=st.sampled_from([100, 600, 1_000, 5_000, 30_000]))
    def advance(self, ms: int) -> None:
        self.now += ms

    # -- recovery ------------------------------------------------------------------------------

    @rule(
        unreachable=st.sets(st.sampled_from(NAMES)),
        failing=st.sets(st.sampled_from(NAMES)),
        eager=st.booleans(),
    )
    def recovery_pass(self, unreachable: set[str], failing: set[str], eager: bool) -> None:
        """A pass: scan the resources due that answer, plan, act on the modelled world;
        `failing`: resources where finishing a branch fails in this pass (busy, lost)."""
        now = self.now
        due, _ = resources_due(NAMES, self.memory.backoff, now, eager)
        listings = {}
        for name in due:
            if name in unreachable:
                self.memory.fail(name, now, INTERVAL_MS)
                continue
            self.memory.succeeded(name)
            listings[name] = Listing(name, frozenset(self.world[SERVER[name]]))
        decided = [
            row.record()
            for row in sorted(self.log.values(), key=lambda r: (r.begun_ms, r.gtrid))
            if row.state is not State.ACTIVE
            and not row.completed
            and row.decided_ms is not None
            and row.decided_ms < now - GRACE_MS + 1
        ]
        listed = {x.gtrid for item in listings.values() for x in item.xids}
        done = {r.gtrid for r in decided}
        records = {g: self.log[g].record() for g in listed - done if g in self.log}
        facts = Facts(
            now, CLUSTER, DIALECTS, listings, decided, records, self.memory, GRACE_MS, eager
        )
        p = plan(facts)
        self.memory.suspects = p.suspects

        txns = dict(p.txns)
        for abort in p.aborts:
            gtrid = abort.proposal.gtrid
            assert parse_gtrid(gtrid).deadline_unix_s * 1000 <= now, f"{gtrid}: before deadline"
            row = self.log.get(gtrid)
            assert row is None or row.state is State.ACTIVE, f"{gtrid} was decided: {row}"
            if self._decide(abort.proposal) is State.ABORTED:
                txns[gtrid] = TxnPlan(gtrid, abort.complete, list(abort.steps))
        for txn in txns.values():
            finished = not txn.blocked
            state = self.log[txn.gtrid].state
            for step in txn.steps:
                assert step.commit is (state is State.COMMITTED), f"{step} against {state}"
                if step.resource in failing:
                    self.memory.fail(step.key, now, INTERVAL_MS)
                    finished = False
                    continue
                if not step.verify:
                    self._finish(step.resource, step.xid, state)
                self.memory.succeeded(step.key)
            if finished and txn.complete:
                self.log[txn.gtrid].completed = True
        self.memory.keep_backoff_of(NAMES, set(txns))

    @rule()
    def everything_settles(self) -> None:
        """Past every deadline, grace and backoff, with every resource answering: two passes a
        grace apart finish every branch of this cluster that is prepared (docs/design.md,
        invariant 4). (An ABORT that recovery decided for an orphan with one branch sighted
        twice, another once, covers the latter too: rolled back once that decision is older
        than the grace, like any decided transaction's branch.)"""
        deadlines = [
            parse_gtrid(x.gtrid).deadline_unix_s * 1000 for s in self.world.values() for x in s
        ]
        self.now = max([self.now, *deadlines]) + MAX_BACKOFF_MS
        for _ in range(2):
            self.now += GRACE_MS
            self.recovery_pass(set(), set(), eager=False)
        prepared = {x for server in self.world.values() for x in server}
        left = {x for x in prepared if parse_gtrid(x.gtrid).cluster == CLUSTER}
        assert not left, f"still prepared after two passes: {left}"

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def branches_ended_as_decided(self) -> None:
        for xid, state in self.fate.items():
            row = self.log.get(xid.gtrid)
            assert row is not None and row.state is state, f"{xid} ended {state}, log: {row}"

    @invariant()
    def foreign_branches_are_untouched(self) -> None:
        for server, xid in self.foreign:
            assert xid in self.world[server], f"{xid} of another cluster was finished"


RecoveryModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_recovery_model = RecoveryModel.TestCase
