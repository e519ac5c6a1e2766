"""A model-based test of the decision log's rules (coordinator/log/interface.py), with hypothesis.

Random interleavings of Begin, Commit, Abort, Ack, clock moves (onto and past deadlines),
restarts (close and reopen the store on the same file) and decisions raced from several
threads, against two `SqliteDecisionLog` replicas that share one file, in process, with a
clock the test moves. A plain model says what each answer must be; whatever the
interleaving:
- one decision: every answer for a gtrid, from either replica, is the first one, and the row
  keeps that state, reason and decision time for good (across restarts too);
- nothing expired is committed: a Commit decision is taken only while now < deadline (a
  one-phase Ack records a commit the client did alone, without asking, and is exempt);
- an unknown gtrid handed out by Begin is never committed by Commit (presumed abort: its
  Begin was lost); one a client made itself (`ts2`, `Proposal.minted`) is decided by its own
  deadline, like an active row, also when a racing ABORT (recovery's) got there first;
- a proposal from the wire (`presumed_if_late`) for an unknown gtrid past its own deadline is
  answered ABORTED ("deadline passed") and leaves no row: the gtrid stays undecided, and
  every later answer for it is ABORTED too.

Begins and Acks are queued, not waited for; before a replica touches a gtrid, the other
replica's queue is flushed, so the model knows the order (as a client knows that its Begin
was answered before it sends Commit). Races between replicas are the `race` rule's job.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from twostep.coordinator import (
    Ack,
    Begun,
    BranchRecord,
    Proposal,
    SqliteDecisionLog,
    State,
    TransactionRecord,
)
from twostep.coordinator.log import interface as rules

CLUSTER = "model"
START_MS = 1_700_000_000_000
REPLICAS = ("a", "b")
BRANCHES = (
    BranchRecord("orders", "orders", "postgresql"),
    BranchRecord("billing", "billing", "mysql"),
)


class Clock:
    """Unix milliseconds that move only when the test says so (shared by both replicas)."""

    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


@dataclass
class Txn:
    """What the model knows of one gtrid."""

    gtrid: str
    deadline_ms: int | None  # None: never begun, unknown to the log
    #: The deadline written in a never-begun ts1 gtrid (`unknown_gtrid`).
    unknown_deadline_ms: int | None = None
    #: A gtrid a client made (ts2), unknown to the log until decided: its own deadline.
    minted_deadline_ms: int | None = None
    decision: tuple[State, str] | None = None
    decided_ms: int | None = None
    #: False while the decision is a queued one-phase Ack not yet written.
    durable: bool = True
    completed: bool = False


class DecisionLogModel(RuleBasedStateMachine):
    gtrids = Bundle("gtrids")

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="twostep-model-")
        self.clock = Clock()
        self.stores = {name: self._open() for name in REPLICAS}
        self.dirty: set[str] = set()  # replicas with queued, unflushed Begins or Acks
        self.txns: dict[str, Txn] = {}
        self.seen: dict[str, tuple[State, str, int | None]] = {}  # first durable row seen

    def _open(self) -> SqliteDecisionLog:
        return SqliteDecisionLog(self.directory, clock=self.clock)

    def teardown(self) -> None:
        for store in self.stores.values():
            store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------

    def _use(self, replica: str) -> SqliteDecisionLog:
        """The replica's store, after the other replicas' queues reached the file."""
        for other in sorted(self.dirty - {replica}):
            self.stores[other].flush()
            self._made_durable(other)
        return self.stores[replica]

    def _made_durable(self, replica: str) -> None:
        self.dirty.discard(replica)
        if not self.dirty:
            for txn in self.txns.values():
                txn.durable = True

    def _expected(self, txn: Txn, proposal: Proposal) -> tuple[State, str]:
        """The answer to `proposal` if it were the first decision for the gtrid."""
        if txn.decision is not None:
            return txn.decision
        if self._presumed(txn, proposal):
            return State.ABORTED, rules.DEADLINE_PASSED
        if not proposal.commit:
            return State.ABORTED, proposal.reason or rules.ABORTED_BY_CLIENT
        deadline = txn.deadline_ms if txn.deadline_ms is not None else txn.minted_deadline_ms
        if deadline is None:
            return State.ABORTED, rules.UNKNOWN_TRANSACTION
        if self.clock.ms < deadline:
            return State.COMMITTED, ""
        return State.ABORTED, rules.DEADLINE_PASSED

    def _presumed(self, txn: Txn, proposal: Proposal) -> bool:
        """Whether `proposal` is answered by presumption, without a row."""
        unknown = txn.decision is None and txn.deadline_ms is None
        late = proposal.fallback_deadline_ms <= self.clock.ms
        return proposal.presumed_if_late and unknown and late

    def _record(self, txn: Txn, answer: tuple[State, str], proposal: Proposal) -> None:
        if self._presumed(txn, proposal):
            assert answer == (State.ABORTED, rules.DEADLINE_PASSED), f"{txn.gtrid}: {answer}"
            return
        if txn.decision is None:
            txn.decision, txn.decided_ms = answer, self.clock.ms
        assert answer == txn.decision, f"{txn.gtrid}: answered {answer}, decided {txn.decision}"

    def _new_gtrid(self, deadline_ms: int, version: str = "ts1") -> str:
        # Shaped like new_gtrid()'s, but numbered: hypothesis replays must see the same ids.
        return f"{version}.{CLUSTER}.{-(-deadline_ms // 1000)}.{len(self.txns):024d}"

    def _proposal(self, txn: Txn, commit: bool, reason: str, presume: bool = False) -> Proposal:
        minted = txn.minted_deadline_ms is not None
        fallback = txn.deadline_ms or txn.minted_deadline_ms or txn.unknown_deadline_ms or 0
        branches = BRANCHES if commit else ()
        return Proposal(txn.gtrid, commit, branches, reason, fallback, minted, presume)

    # -- rules -------------------------------------------------------------------------------

    @initialize(target=gtrids)
    def first_begin(self) -> str:
        return self._begin("a", 1000)

    @rule(
        target=gtrids,
        replica=st.sampled_from(REPLICAS),
        timeout_ms=st.sampled_from([1, 50, 1000, 30_000]),
    )
    def begin(self, replica: str, timeout_ms: int) -> str:
        return self._begin(replica, timeout_ms)

    def _begin(self, replica: str, timeout_ms: int) -> str:
        deadline = self.clock.ms + timeout_ms
        gtrid = self._new_gtrid(deadline)
        self._use(replica).record_begun([Begun(gtrid, self.clock.ms, deadline)])
        self.dirty.add(replica)
        self.txns[gtrid] = Txn(gtrid, deadline)
        return gtrid

    @rule(target=gtrids)
    def unknown_gtrid(self) -> str:
        """A gtrid the log never heard of (its Begin was lost, or it was made up)."""
        deadline = self.clock.ms + 1000
        gtrid = self._new_gtrid(deadline)
        self.txns[gtrid] = Txn(gtrid, None, unknown_deadline_ms=deadline)
        return gtrid

    @rule(target=gtrids, timeout_ms=st.sampled_from([1, 50, 1000, 30_000]))
    def minted_gtrid(self, timeout_ms: int) -> str:
        """A gtrid a client made itself (ts2): the log hears of it first at Commit or Abort."""
        deadline = self.clock.ms + timeout_ms
        gtrid = self._new_gtrid(deadline, "ts2")
        self.txns[gtrid] = Txn(gtrid, None, minted_deadline_ms=deadline)
        return gtrid

    @rule(
        gtrid=gtrids,
        replica=st.sampled_from(REPLICAS),
        commit=st.booleans(),
        reason=st.sampled_from(["", "a participant voted no"]),
        presume=st.booleans(),
    )
    def decide(self, gtrid: str, replica: str, commit: bool, reason: str, presume: bool) -> None:
        txn = self.txns[gtrid]
        proposal = self._proposal(txn, commit, reason, presume)
        expected = self._expected(txn, proposal)
        (decision,) = self._use(replica).decide([proposal])
        self._made_durable(replica)  # the writer wrote the queue in order before it
        assert (decision.state, decision.reason) == expected, f"{proposal}: {decision}"
        self._record(txn, expected, proposal)

    @rule(
        replica=st.sampled_from(REPLICAS),
        picks=st.lists(st.tuples(gtrids, st.booleans(), st.booleans()), min_size=2, max_size=4),
    )
    def decide_batch(self, replica: str, picks: list[tuple[str, bool, bool]]) -> None:
        """One request with several proposals, the same gtrid possibly twice."""
        proposals = [
            self._proposal(self.txns[g], commit, "batch", presume) for g, commit, presume in picks
        ]
        store = self._use(replica)
        expected = []
        for proposal in proposals:  # in order: a later one sees the decision of an earlier one
            txn = self.txns[proposal.gtrid]
            answer = self._expected(txn, proposal)
            expected.append(answer)
            self._record(txn, answer, proposal)
        decisions = store.decide(proposals)
        self._made_durable(replica)
        assert [(d.state, d.reason) for d in decisions] == expected

    @rule(gtrid=gtrids, commits=st.lists(st.booleans(), min_size=2, max_size=4))
    def race(self, gtrid: str, commits: list[bool]) -> None:
        """Commits and Aborts of one gtrid from several threads on both replicas at once."""
        txn = self.txns[gtrid]
        for name in sorted(self.dirty):
            self.stores[name].flush()
            self._made_durable(name)
        proposals = [self._proposal(txn, c, f"racer {i}") for i, c in enumerate(commits)]
        allowed = {self._expected(txn, p) for p in proposals}
        start = threading.Barrier(len(proposals))

        def run(i: int) -> tuple[State, str]:
            store = self.stores[REPLICAS[i % len(REPLICAS)]]
            start.wait()
            (decision,) = store.decide([proposals[i]])
            return decision.state, decision.reason

        with ThreadPoolExecutor(len(proposals)) as pool:
            answers = set(pool.map(run, range(len(proposals))))
        assert len(answers) == 1, f"{gtrid} got {len(answers)} decisions: {answers}"
        (answer,) = answers
        assert answer in allowed, f"{gtrid}: {answer} is none of {allowed}"
        self._record(txn, answer, proposals[0])

    @rule(gtrid=gtrids, replica=st.sampled_from(REPLICAS), one_phase=st.booleans())
    def ack(self, gtrid: str, replica: str, one_phase: bool) -> None:
        txn = self.txns[gtrid]
        self._use(replica).record_acks([Ack(gtrid, one_phase_commit=one_phase)])
        self.dirty.add(replica)
        if one_phase and txn.decision is None and txn.deadline_ms is not None:
            txn.decision = (State.COMMITTED, rules.ONE_PHASE_COMMIT)
            txn.decided_ms, txn.durable = self.clock.ms, False
        if txn.decision is not None:  # no row (never begun, never decided): ignored
            txn.completed = True

    @rule(ms=st.sampled_from([1, 10, 400, 1000, 5000]))
    def advance(self, ms: int) -> None:
        self.clock.ms += ms

    @rule(gtrid=gtrids, offset=st.sampled_from([-1, 0, 1]))
    def to_deadline(self, gtrid: str, offset: int) -> None:
        """Move the clock to just before, onto or just past a deadline (never backwards)."""
        txn = self.txns[gtrid]
        deadline = txn.deadline_ms or txn.minted_deadline_ms or txn.unknown_deadline_ms
        if deadline is not None:
            self.clock.ms = max(self.clock.ms, deadline + offset)

    @rule(replica=st.sampled_from(REPLICAS))
    def restart(self, replica: str) -> None:
        """Close (which writes what is queued) and reopen the store on the same file."""
        self.stores[replica].close()
        self.stores[replica] = self._open()
        self._made_durable(replica)

    @rule(gtrid=consumes(gtrids))
    def forget(self, gtrid: str) -> None:
        """Stop drawing a gtrid (keeps the bundle small); the invariants still check it."""

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def decisions_are_durable_and_never_change(self) -> None:
        store = self.stores["a"]
        for txn in self.txns.values():
            if txn.decision is None or not txn.durable:
                continue
            row = store.get(txn.gtrid)
            assert row is not None, f"{txn.gtrid}: decided {txn.decision} but not in the log"
            assert (row.state, row.reason) == txn.decision, f"{txn.gtrid}: {row} vs {txn}"
            _never_committed_late(row)
            first = self.seen.setdefault(txn.gtrid, (row.state, row.reason, row.decided_ms))
            assert first == (row.state, row.reason, row.decided_ms), f"{row} changed from {first}"
            if not self.dirty:  # every Ack is written
                assert row.completed == txn.completed, f"{row}: completed should be {txn.completed}"

    @invariant()
    def undecided_rows_stay_active(self) -> None:
        store = self.stores["b"]
        for txn in self.txns.values():
            if txn.decision is None and txn.deadline_ms is not None and txn.durable:
                row = store.get(txn.gtrid)
                if row is not None:  # a Begin still queued may not be written yet
                    assert row.state is State.ACTIVE, f"{row}: nobody decided it"
            elif txn.decision is None and txn.deadline_ms is None:
                assert store.get(txn.gtrid) is None, f"{txn.gtrid} was never begun nor decided"


def _never_committed_late(row: TransactionRecord) -> None:
    if row.state is State.COMMITTED and row.reason != rules.ONE_PHASE_COMMIT:
        assert row.decided_ms is not None and row.decided_ms < row.deadline_ms, (
            f"{row.gtrid} committed at {row.decided_ms}, deadline {row.deadline_ms}"
        )


DecisionLogModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_decision_log_model = DecisionLogModel.TestCase
