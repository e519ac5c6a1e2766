"""The coordinator's decision rules, over gRPC, against an in-process server (no databases)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from twostep.client.tpc import new_gtrid
from twostep.coordinator import (
    Begun,
    CoordinatorServer,
    Proposal,
    Settings,
    SqliteDecisionLog,
    State,
)
from twostep.testing import FakeClock
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

ACTIVE = pb.TRANSACTION_STATE_ACTIVE
COMMITTED = pb.TRANSACTION_STATE_COMMITTED
ABORTED = pb.TRANSACTION_STATE_ABORTED
RPC_TIMEOUT = 10.0


@dataclass
class Coordinator:
    server: CoordinatorServer
    stub: pb_grpc.CoordinatorStub
    channel: grpc.Channel

    @property
    def cluster_id(self) -> str:
        """The cluster id the server runs with (generated into its data dir unless set)."""
        return self.server.settings.cluster_id

    @property
    def log(self) -> SqliteDecisionLog:
        assert isinstance(self.server.decision_log, SqliteDecisionLog)
        return self.server.decision_log

    # -- shorthands, each one RPC ------------------------------------------------------------

    def begin(self, timeout_ms: int = 30_000, count: int = 1) -> list[pb.Started]:
        request = pb.BeginRequest(timeout_ms=timeout_ms, count=count)
        return list(self.stub.Begin(request, timeout=RPC_TIMEOUT).transactions)

    def begin_one(self, timeout_ms: int = 30_000) -> str:
        return self.begin(timeout_ms)[0].gtrid

    def commit(self, gtrid: str, branches: list[pb.Branch] | None = None) -> pb.Decision:
        item = pb.CommitItem(gtrid=gtrid, branches=branches or two_branches())
        reply = self.stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        return reply.decisions[0]

    def abort(self, gtrid: str, reason: str = "test") -> pb.Decision:
        item = pb.AbortItem(gtrid=gtrid, reason=reason)
        reply = self.stub.Abort(pb.AbortRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        return reply.decisions[0]

    def ack(self, gtrid: str, one_phase_commit: bool = False) -> None:
        item = pb.AckItem(gtrid=gtrid, one_phase_commit=one_phase_commit)
        self.stub.Ack(pb.AckRequest(transactions=[item]), timeout=RPC_TIMEOUT)

    def get(self, gtrid: str) -> pb.Transaction:
        request = pb.GetTransactionRequest(gtrid=gtrid)
        return self.stub.GetTransaction(request, timeout=RPC_TIMEOUT)

    def list_gtrids(self, **filters: object) -> list[str]:
        request = pb.ListTransactionsRequest(**filters)
        admin = (("authorization", f"Bearer {self.server.admin_token}"),)  # listing is for admins
        reply = self.stub.ListTransactions(request, metadata=admin, timeout=RPC_TIMEOUT)
        return [t.gtrid for t in reply.transactions]


def two_branches() -> list[pb.Branch]:
    return [
        pb.Branch(resource="orders", bqual="orders", dialect="postgresql"),
        pb.Branch(resource="billing", bqual="billing", dialect="mysql", session_id=42),
    ]


@pytest.fixture
def start_coordinator(tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    """Starts in-process coordinators on 127.0.0.1:0; all are stopped at teardown."""
    running: list[Coordinator] = []

    def start(
        clock: Callable[[], int] | None = None,
        decision_log: SqliteDecisionLog | None = None,
        run_recovery: bool = True,
        **settings: object,
    ) -> Coordinator:
        data_dir = tmp_path / f"coordinator-{len(running)}"
        base = Settings(listen="127.0.0.1:0", data_dir=data_dir)
        extra = {"clock": clock} if clock else {}
        server = CoordinatorServer(
            replace(base, **settings),
            decision_log=decision_log,
            run_recovery=run_recovery,
            **extra,
        )
        address = server.start()
        channel = grpc.insecure_channel(address)
        coordinator = Coordinator(server, pb_grpc.CoordinatorStub(channel), channel)
        running.append(coordinator)
        return coordinator

    yield start
    for coordinator in running:
        coordinator.channel.close()
        coordinator.server.stop(grace=1)


@pytest.fixture
def coordinator(start_coordinator: Callable[..., Coordinator]) -> Coordinator:
    return start_coordinator()


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def refusal(call: Callable[[], object]) -> str:
    """The details of an INVALID_ARGUMENT refusal (fails if the call was not refused so)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details()


@pytest.fixture
def held_write_lock(coordinator: Coordinator) -> Callable[[], sqlite3.Connection]:
    """Takes SQLite's write lock on the coordinator's log from outside: a stalled disk."""

    def hold() -> sqlite3.Connection:
        outsider = sqlite3.connect(coordinator.log.path, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")
        return outsider

    return hold


# -- one decision ------------------------------------------------------------------------------


def test_concurrent_commit_and_abort_of_one_gtrid_all_see_the_same_decision(
    start_coordinator: Callable[..., Coordinator],
):
    coordinator = start_coordinator(workers=64)
    callers = 16
    for _ in range(10):
        gtrid = coordinator.begin_one()
        start = threading.Barrier(callers)

        def ask(i: int, gtrid: str = gtrid, start: threading.Barrier = start) -> int:
            start.wait()
            decision = coordinator.commit(gtrid) if i % 2 else coordinator.abort(gtrid)
            return decision.state

        with ThreadPoolExecutor(callers) as pool:
            outcomes = set(pool.map(ask, range(callers)))
        assert len(outcomes) == 1, outcomes
        assert outcomes <= {COMMITTED, ABORTED}
        assert coordinator.get(gtrid).state in outcomes


def test_two_logs_sharing_one_file_take_one_decision_per_gtrid(tmp_path: Path):
    first, second = SqliteDecisionLog(tmp_path), SqliteDecisionLog(tmp_path)
    try:
        now = time.time_ns() // 1_000_000
        gtrids = [new_gtrid("main", now // 1000 + 60) for _ in range(20)]
        first.record_begun([Begun(g, now, now + 60_000) for g in gtrids])
        first.flush()

        def decide(args: tuple[SqliteDecisionLog, str, bool]) -> tuple[str, State]:
            log, gtrid, commit = args
            (decision,) = log.decide([Proposal(gtrid, commit, reason="racing")])
            return gtrid, decision.state

        work = [(log, g, log is first) for g in gtrids for log in (first, second) * 4]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(decide, work))
        for gtrid in gtrids:
            seen = {state for g, state in answers if g == gtrid}
            assert len(seen) == 1, (gtrid, seen)
            record = second.get(gtrid)
            assert record is not None
            assert {record.state} == seen
    finally:
        first.close()
        second.close()


# -- the rules ---------------------------------------------------------------------------------


def test_commit_before_the_deadline_is_committed_with_its_branches(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    decision = coordinator.commit(gtrid)
    assert (decision.gtrid, decision.state) == (gtrid, COMMITTED)
    stored = coordinator.get(gtrid)
    assert stored.state == COMMITTED
    assert [b.resource for b in stored.branches] == ["orders", "billing"]
    assert stored.branches[1].session_id == 42
    assert stored.decided_unix_ms >= stored.begun_unix_ms
    assert not stored.completed


def test_late_commit_after_the_deadline_is_aborted(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock)
    gtrid = coordinator.begin_one(timeout_ms=1000)
    clock.advance(1000)
    decision = coordinator.commit(gtrid)
    assert (decision.state, decision.reason) == (ABORTED, "deadline passed")
    assert coordinator.commit(gtrid).state == ABORTED  # and it stays so


def test_commit_one_millisecond_before_the_deadline_is_committed(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock)
    gtrid = coordinator.begin_one(timeout_ms=1000)
    clock.advance(999)
    assert coordinator.commit(gtrid).state == COMMITTED


def test_commit_of_an_unknown_gtrid_is_aborted_and_recorded(coordinator: Coordinator):
    gtrid = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)  # well-formed, never begun
    decision = coordinator.commit(gtrid)
    assert (decision.state, decision.reason) == (ABORTED, "unknown transaction")
    stored = coordinator.get(gtrid)
    assert stored.state == ABORTED
    assert [b.resource for b in stored.branches] == ["orders", "billing"]  # for recovery


def test_a_gtrid_made_by_a_client_is_committed_on_first_sight_before_its_deadline(
    start_coordinator,
):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, max_timeout_ms=60_000)
    deadline_s = -(-(clock.ms + 2_000) // 1000)
    gtrid = new_gtrid(coordinator.cluster_id, deadline_s, minted=True)  # never begun
    decision = coordinator.commit(gtrid)
    assert (decision.state, decision.reason) == (COMMITTED, "")
    stored = coordinator.get(gtrid)
    assert stored.deadline_unix_ms == deadline_s * 1000  # the gtrid's own, for recovery
    assert [b.resource for b in stored.branches] == ["orders", "billing"]
    assert coordinator.commit(gtrid).state == COMMITTED  # asked again: the same


def test_a_gtrid_made_by_a_client_is_aborted_once_its_deadline_passed(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, max_timeout_ms=60_000)
    deadline_s = -(-(clock.ms + 2_000) // 1000)
    gtrid = new_gtrid(coordinator.cluster_id, deadline_s, minted=True)
    clock.ms = deadline_s * 1000
    decision = coordinator.commit(gtrid)
    assert (decision.state, decision.reason) == (ABORTED, "deadline passed")
    # Recovery's ABORT of the orphan and the client's Commit race by the same unique key:
    # the first decision stands.
    racing = new_gtrid(coordinator.cluster_id, deadline_s + 60, minted=True)
    assert coordinator.abort(racing, "recovery").state == ABORTED
    assert coordinator.commit(racing).state == ABORTED


def test_a_gtrid_made_by_a_client_beyond_the_max_timeout_is_refused_and_not_recorded(
    start_coordinator,
):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, max_timeout_ms=10_000)
    far = new_gtrid(coordinator.cluster_id, (clock.ms + 60_000) // 1000, minted=True)
    assert "max_timeout" in refusal(lambda: coordinator.commit(far))
    assert status_of(lambda: coordinator.get(far)) == grpc.StatusCode.NOT_FOUND
    near = new_gtrid(coordinator.cluster_id, (clock.ms + 10_000) // 1000, minted=True)
    assert coordinator.commit(near).state == COMMITTED  # within max_timeout (+ the slack)


def test_describe_gives_what_a_client_needs_to_make_gtrids(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, max_timeout_ms=7_000, default_timeout_ms=5_000)
    described = coordinator.stub.Describe(pb.DescribeRequest(), timeout=RPC_TIMEOUT)
    assert described.cluster_id == coordinator.cluster_id
    assert (described.max_timeout_ms, described.default_timeout_ms) == (7_000, 5_000)
    assert described.now_unix_ms == clock.ms


def test_duplicate_commit_gets_committed_again(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    first = coordinator.commit(gtrid)
    again = coordinator.commit(gtrid, [pb.Branch(resource="x", bqual="x", dialect="mysql")])
    assert first.state == again.state == COMMITTED
    assert [b.resource for b in coordinator.get(gtrid).branches] == ["orders", "billing"]


def test_abort_after_commit_returns_committed(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    coordinator.commit(gtrid)
    assert coordinator.abort(gtrid, "too late").state == COMMITTED
    assert coordinator.get(gtrid).state == COMMITTED


def test_commit_after_abort_returns_aborted_with_the_abort_reason(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    assert coordinator.abort(gtrid, "billing voted NO").state == ABORTED
    decision = coordinator.commit(gtrid)
    assert (decision.state, decision.reason) == (ABORTED, "billing voted NO")


def test_abort_of_an_unknown_gtrid_is_recorded_as_aborted(coordinator: Coordinator):
    gtrid = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)
    assert coordinator.abort(gtrid, "rolled back").state == ABORTED
    assert coordinator.get(gtrid).reason == "rolled back"
    assert coordinator.commit(gtrid).state == ABORTED


def test_a_batch_of_commits_gets_one_decision_per_item_in_order(coordinator: Coordinator):
    fresh, committed = coordinator.begin_one(), coordinator.begin_one()
    coordinator.commit(committed)
    unknown = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)
    items = [pb.CommitItem(gtrid=g, branches=two_branches()) for g in (unknown, fresh, committed)]
    reply = coordinator.stub.Commit(pb.CommitRequest(transactions=items), timeout=RPC_TIMEOUT)
    assert [(d.gtrid, d.state) for d in reply.decisions] == [
        (unknown, ABORTED),
        (fresh, COMMITTED),
        (committed, COMMITTED),
    ]


def test_ack_marks_a_decided_transaction_completed(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    coordinator.commit(gtrid)
    coordinator.ack(gtrid)
    coordinator.log.flush()
    assert coordinator.get(gtrid).completed


def test_ack_with_one_phase_commit_records_an_active_transaction_as_committed(
    coordinator: Coordinator,
):
    gtrid = coordinator.begin_one()
    coordinator.ack(gtrid, one_phase_commit=True)
    coordinator.log.flush()
    stored = coordinator.get(gtrid)
    assert (stored.state, stored.reason) == (COMMITTED, "one-phase commit by the client")
    assert stored.completed
    assert coordinator.abort(gtrid).state == COMMITTED


def test_ack_of_an_unknown_gtrid_is_ignored(coordinator: Coordinator):
    gtrid = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)
    coordinator.ack(gtrid, one_phase_commit=True)
    coordinator.log.flush()
    assert status_of(lambda: coordinator.get(gtrid)) == grpc.StatusCode.NOT_FOUND


def test_begin_and_ack_answer_without_waiting_for_the_disk(coordinator, held_write_lock):
    outsider = held_write_lock()  # the log's writer is stuck until this is released
    try:
        started = time.monotonic()
        gtrid = coordinator.begin_one()
        coordinator.ack(gtrid)
        assert time.monotonic() - started < 5  # the writer waits up to 10 s for the lock
        assert status_of(lambda: coordinator.get(gtrid)) == grpc.StatusCode.NOT_FOUND
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    coordinator.log.flush()
    assert coordinator.get(gtrid).state == ACTIVE


def test_a_decision_the_log_cannot_write_is_unavailable_and_can_be_asked_again(
    start_coordinator, tmp_path: Path
):
    impatient = SqliteDecisionLog(tmp_path / "impatient", busy_timeout_ms=100)
    coordinator = start_coordinator(decision_log=impatient)
    gtrid = coordinator.begin_one()
    impatient.flush()
    outsider = sqlite3.connect(impatient.path, isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")  # the writer gives up after 100 ms: a failed write
    try:
        with pytest.raises(grpc.RpcError) as failed:
            coordinator.commit(gtrid)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ask again" in failed.value.details()
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    assert coordinator.get(gtrid).state == ACTIVE  # nothing was decided
    assert coordinator.commit(gtrid).state == COMMITTED
    assert impatient.stats().failed_batches == 1


# -- Begin -------------------------------------------------------------------------------------


def test_begin_clamps_the_timeout_to_the_max_and_uses_the_coordinator_clock(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, max_timeout_ms=120_000)
    (started,) = coordinator.begin(timeout_ms=4_000_000_000)
    assert started.deadline_unix_ms == clock.ms + 120_000
    deadline_in_gtrid = int(started.gtrid.split(".")[2], 36)
    assert deadline_in_gtrid == -(-started.deadline_unix_ms // 1000)  # rounded up, never early


def test_begin_without_a_timeout_gets_the_default(start_coordinator):
    clock = FakeClock()
    coordinator = start_coordinator(clock=clock, default_timeout_ms=7_000)
    assert coordinator.begin(timeout_ms=0)[0].deadline_unix_ms == clock.ms + 7_000


def test_begin_hands_out_count_distinct_gtrids_of_this_cluster(start_coordinator):
    coordinator = start_coordinator(cluster_id="blue-2")
    started = coordinator.begin(count=1000)
    assert len({s.gtrid for s in started}) == 1000
    assert all(s.gtrid.startswith("ts1.blue-2.") for s in started)
    assert len(coordinator.begin(count=0)) == 1
    assert "count" in refusal(lambda: coordinator.begin(count=1001))


# -- refused requests: INVALID_ARGUMENT, nothing recorded --------------------------------------

BAD_GTRIDS = {
    "empty": "",
    "not a gtrid": "hello",
    "overlong": "ts1.main.abc." + "a" * 100,
    "quoted": "ts1.main.abc.'aaaaaaaaaaaaaaaaaaaaaaa",
    "sql": "ts1.main.abc.aaaaaaaaaaaaaaaaaaaaaaaa'; DROP TABLE x; --",
    "nul": "ts1.main.abc.aaaaaaaaaaaaaaaaaaaaaaa\x00",
    "upper case": "TS1.MAIN.ABC.AAAAAAAAAAAAAAAAAAAAAAAA",
    "space": " ts1.main.abc.aaaaaaaaaaaaaaaaaaaaaaaa",
}


@pytest.mark.parametrize("bad", BAD_GTRIDS.values(), ids=BAD_GTRIDS.keys())
def test_malformed_gtrids_are_refused_by_every_rpc_and_nothing_is_recorded(
    coordinator: Coordinator, bad: str
):
    before = coordinator.log.stats()
    good = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)
    commit = pb.CommitRequest(
        transactions=[
            pb.CommitItem(gtrid=good, branches=two_branches()),
            pb.CommitItem(gtrid=bad, branches=two_branches()),
        ]
    )
    assert "transactions[1].gtrid" in refusal(lambda: coordinator.stub.Commit(commit))
    abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=bad)])
    assert "transactions[0].gtrid" in refusal(lambda: coordinator.stub.Abort(abort))
    ack = pb.AckRequest(transactions=[pb.AckItem(gtrid=bad, one_phase_commit=True)])
    assert "transactions[0].gtrid" in refusal(lambda: coordinator.stub.Ack(ack))
    get = pb.GetTransactionRequest(gtrid=bad)
    assert "gtrid" in refusal(lambda: coordinator.stub.GetTransaction(get))
    assert coordinator.log.stats() == before
    assert coordinator.list_gtrids() == []


def test_a_gtrid_of_another_cluster_is_refused(coordinator: Coordinator):
    theirs = new_gtrid("other", int(time.time()) + 60)
    details = refusal(lambda: coordinator.commit(theirs))
    assert "cluster 'other'" in details and repr(coordinator.cluster_id) in details
    assert "cluster" in refusal(lambda: coordinator.abort(theirs))
    assert "cluster" in refusal(lambda: coordinator.get(theirs))
    assert coordinator.list_gtrids() == []


BAD_BRANCHES = {
    "empty resource": ([pb.Branch(resource="", bqual="a", dialect="mysql")], "resource"),
    "quoted resource": ([pb.Branch(resource="o'rders", bqual="a", dialect="mysql")], "resource"),
    "NUL resource": ([pb.Branch(resource="ord\x00ers", bqual="a", dialect="mysql")], "resource"),
    "overlong resource": ([pb.Branch(resource="r" * 65, bqual="a", dialect="mysql")], "resource"),
    "dot first": ([pb.Branch(resource=".orders", bqual="a", dialect="mysql")], "resource"),
    "space in bqual": ([pb.Branch(resource="a", bqual="a b", dialect="mysql")], "bqual"),
    "empty bqual": ([pb.Branch(resource="a", bqual="", dialect="mysql")], "bqual"),
    "unknown dialect": ([pb.Branch(resource="a", bqual="a", dialect="sqlite")], "dialect"),
    "no dialect": ([pb.Branch(resource="a", bqual="a")], "dialect"),
    "same resource twice": (
        [
            pb.Branch(resource="a", bqual="a", dialect="mysql"),
            pb.Branch(resource="a", bqual="b", dialect="postgresql"),
        ],
        "branches[1].resource",
    ),
    "same bqual twice": (
        [
            pb.Branch(resource="a", bqual="a", dialect="mysql"),
            pb.Branch(resource="b", bqual="a", dialect="postgresql"),
        ],
        "branches[1].bqual",
    ),
    "no branches": ([], "branches: Commit needs at least one"),
}


@pytest.mark.parametrize("branches, field", BAD_BRANCHES.values(), ids=BAD_BRANCHES.keys())
def test_malformed_branches_are_refused_and_nothing_is_recorded(
    coordinator: Coordinator, branches: list[pb.Branch], field: str
):
    gtrid = coordinator.begin_one()
    coordinator.log.flush()
    before = coordinator.log.stats()
    commit = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=branches)])
    assert field in refusal(lambda: coordinator.stub.Commit(commit))
    if branches:
        abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=gtrid, branches=branches)])
        assert field in refusal(lambda: coordinator.stub.Abort(abort))
    assert coordinator.log.stats() == before
    assert coordinator.get(gtrid).state == ACTIVE


def test_a_request_with_one_bad_item_is_refused_whole(coordinator: Coordinator):
    good = coordinator.begin_one()
    coordinator.log.flush()
    bad_branch = pb.Branch(resource="bad name", bqual="x", dialect="mysql")
    request = pb.CommitRequest(
        transactions=[
            pb.CommitItem(gtrid=good, branches=two_branches()),
            pb.CommitItem(gtrid=coordinator.begin_one(), branches=[bad_branch]),
        ]
    )
    details = refusal(lambda: coordinator.stub.Commit(request))
    assert details.startswith("transactions[1].branches[0].resource: invalid resource name")
    assert coordinator.get(good).state == ACTIVE


def test_the_same_gtrid_twice_in_one_request_is_refused(coordinator: Coordinator):
    gtrid = coordinator.begin_one()
    item = pb.CommitItem(gtrid=gtrid, branches=two_branches())
    request = pb.CommitRequest(transactions=[item, item])
    assert "transactions[1].gtrid: the same gtrid as transactions[0]" in refusal(
        lambda: coordinator.stub.Commit(request)
    )
    acks = pb.AckRequest(transactions=[pb.AckItem(gtrid=gtrid)] * 2)
    assert "same gtrid" in refusal(lambda: coordinator.stub.Ack(acks))


def test_batches_are_bounded_and_not_empty(coordinator: Coordinator):
    gtrids = [s.gtrid for s in coordinator.begin(count=1000)]
    gtrids.append(coordinator.begin_one())
    acks = pb.AckRequest(transactions=[pb.AckItem(gtrid=g) for g in gtrids])
    assert "at most 1000" in refusal(lambda: coordinator.stub.Ack(acks))
    assert "empty" in refusal(lambda: coordinator.stub.Commit(pb.CommitRequest()))
    long_reason = pb.AbortItem(gtrid=gtrids[0], reason="x" * 1001)
    request = pb.AbortRequest(transactions=[long_reason])
    assert "reason" in refusal(lambda: coordinator.stub.Abort(request))


# -- reading the log ---------------------------------------------------------------------------


def test_get_transaction_of_an_unknown_gtrid_is_not_found(coordinator: Coordinator):
    gtrid = new_gtrid(coordinator.cluster_id, int(time.time()) + 60)
    assert status_of(lambda: coordinator.get(gtrid)) == grpc.StatusCode.NOT_FOUND


def test_list_transactions_filters_by_state_age_and_completion(start_coordinator):
    clock = FakeClock()
    # No recovery loop: a pass after the clock's jump would expire and complete old_active.
    coordinator = start_coordinator(clock=clock, run_recovery=False)
    old_active = coordinator.begin_one()
    clock.advance(1)
    old_committed = coordinator.begin_one()
    coordinator.commit(old_committed)
    clock.advance(120_000)
    aborted = coordinator.begin_one()
    coordinator.abort(aborted)
    clock.advance(1)
    acked = coordinator.begin_one()
    coordinator.commit(acked)
    coordinator.ack(acked)
    coordinator.log.flush()

    assert coordinator.list_gtrids() == [old_active, old_committed, aborted, acked]  # oldest first
    assert coordinator.list_gtrids(states=[COMMITTED]) == [old_committed, acked]
    assert coordinator.list_gtrids(states=[ACTIVE, ABORTED]) == [old_active, aborted]
    assert coordinator.list_gtrids(older_than_s=60) == [old_active, old_committed]
    assert coordinator.list_gtrids(incomplete_only=True) == [old_active, old_committed, aborted]
    assert coordinator.list_gtrids(states=[COMMITTED], incomplete_only=True) == [old_committed]
    assert coordinator.list_gtrids(limit=2) == [old_active, old_committed]
    assert "states[0]" in refusal(lambda: coordinator.list_gtrids(states=[0]))
    assert "limit" in refusal(lambda: coordinator.list_gtrids(limit=1001))


# -- the server --------------------------------------------------------------------------------


def test_health_reports_serving_for_the_server_and_the_coordinator_service(coordinator):
    health = health_pb2_grpc.HealthStub(coordinator.channel)
    for service in ("", "twostep.v1.Coordinator"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_coordinator_service(coordinator: Coordinator):
    reflection = reflection_pb2_grpc.ServerReflectionStub(coordinator.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    names = {s.name for s in reply.list_services_response.service}
    assert {"twostep.v1.Coordinator", "grpc.health.v1.Health"} <= names


ALL_METHODS = ("Begin", "Commit", "Abort", "Ack", "GetTransaction", "ListTransactions")
GARBAGE = {
    "truncated length": (b"\x0a\xff\xff\xff\xff\x0f", ALL_METHODS),
    "field number zero": (b"\x00\x01", ALL_METHODS),
    "end group without start": (b"\x0c", ALL_METHODS),
    "random": (bytes(range(256)), ALL_METHODS),
    # Well-formed for Begin (an unknown field), but not UTF-8 where a gtrid is expected:
    "invalid utf-8 in gtrid": (b"\x0a\x03\x0a\x01\xff", ("Commit", "Abort", "Ack")),
}


@pytest.mark.parametrize("payload, methods", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_protobuf_gets_an_error_status_and_the_server_keeps_serving(
    coordinator: Coordinator, payload: bytes, methods: tuple[str, ...]
):
    for method in methods:
        raw = coordinator.channel.unary_unary(f"/twostep.v1.Coordinator/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            raw(payload, timeout=RPC_TIMEOUT)
        assert caught.value.code() != grpc.StatusCode.OK, method
    gtrid = coordinator.begin_one()
    assert coordinator.commit(gtrid).state == COMMITTED
    assert coordinator.list_gtrids() == [gtrid]


# -- group commit ------------------------------------------------------------------------------


def test_concurrent_commits_share_fsyncs(start_coordinator, tmp_path):
    # The held writer waits up to a minute for the outsider's lock, not the 10 s default: 200
    # in-process calls may take longer than that to arrive on a loaded machine.
    patient = SqliteDecisionLog(tmp_path / "patient", busy_timeout_ms=60_000)
    coordinator = start_coordinator(decision_log=patient, workers=256)
    gtrids = [s.gtrid for s in coordinator.begin(count=200)]
    coordinator.log.flush()
    before = coordinator.log.stats()
    # A stalled disk: commits queue up behind an outside writer, as they would behind an fsync.
    outsider = sqlite3.connect(coordinator.log.path, isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(200) as pool:
        try:
            answers = [pool.submit(coordinator.commit, g) for g in gtrids]
            deadline = time.monotonic() + 45
            while coordinator.log.stats().requests - before.requests < 200:
                assert time.monotonic() < deadline, "the 200 Commits did not all arrive"
                time.sleep(0.01)
        finally:
            outsider.execute("ROLLBACK")
            outsider.close()
        assert {a.result(timeout=30).state for a in answers} == {COMMITTED}
    after = coordinator.log.stats()
    assert after.items - before.items == 200
    assert after.batches - before.batches < 200
    assert after.failed_batches == before.failed_batches
