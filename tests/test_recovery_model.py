"""A model-based test of the recovery planner over many passes, with hypothesis.

Clients begin, prepare branches, commit, abort, finish phase 2 or die at random points;
Begins may be lost (presumed abort); the clock moves; resources become unreachable and
branches fail to finish (backoff). Recovery passes run the real planner
(coordinator/recovery/plan.py) with the real pass memory on listings of a modelled world: one
PostgreSQL database ("orders") and one MariaDB server whose XA RECOVER is server-wide, shared
by two resources ("billing" and "audit"), plus branches of another cluster and of manual
two-phase commit, long past any deadline. The decision log and acting are modelled in a few
lines (first decision wins; a Commit is COMMITTED only before the deadline). Whatever the
interleaving:
- every branch that was committed belongs to a COMMIT decision, every one rolled back to an
  ABORT decision (docs/design.md, invariant 3);
- an orphan's ABORT is proposed only past its gtrid's deadline and after two scans;
- branches of other clusters and other XA users are never touched;
- once every deadline and grace has passed and every resource answers, two passes leave
  nothing of this cluster prepared (invariant 4).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from twostep.client.tpc import Xid, new_gtrid, parse_gtrid
from twostep.coordinator.log import BranchRecord, Proposal, State, TransactionRecord
from twostep.coordinator.recovery.memory import MAX_BACKOFF_MS, PassMemory
from twostep.coordinator.recovery.plan import Facts, Listing, TxnPlan, plan, resources_due

CLUSTER = "model"
START_MS = 1_700_000_000_000
GRACE_MS = 1_000
INTERVAL_MS = 500
DIALECTS = {"orders": "postgresql", "billing": "mysql", "audit": "mysql"}
SERVER = {"orders": "pg", "billing": "maria", "audit": "maria"}
NAMES = sorted(DIALECTS)


def _gtrid(cluster: str, deadline_ms: int, n: int) -> str:
    nonce = base64.b32encode(n.to_bytes(15, "big")).decode().lower()
    deadline_s = -(-deadline_ms // 1000)  # the gtrid carries its deadline rounded up
    return f"{new_gtrid(cluster, deadline_s).rsplit('.', 1)[0]}.{nonce}"


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
        gtrid = _gtrid(CLUSTER, self.now + timeout_ms, self.count)
        deadline = parse_gtrid(gtrid).deadline_unix_s * 1000
        if logged:  # else the Begin was lost in a crash (it is not durable)
            self.log[gtrid] = Row(gtrid, State.ACTIVE, deadline, self.now)
        return Client(gtrid, tuple(sorted(resources)))

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
        """Past every deadline, grace and backoff, with every resource answering: two passes
        finish every branch of this cluster that is prepared (docs/design.md, invariant 4)."""
        deadlines = [
            parse_gtrid(x.gtrid).deadline_unix_s * 1000 for s in self.world.values() for x in s
        ]
        self.now = max([self.now, *deadlines]) + GRACE_MS + MAX_BACKOFF_MS
        for _ in range(2):
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
