"""What one request, or a flood of them, can make the coordinator hold and write: bounded.

Issue 11's inputs against a real coordinator process: Begin{count} floods from 8 threads
while the log's writer is held (the queue refuses with RESOURCE_EXHAUSTED instead of growing,
and the rows written stay bounded); one Commit of 1,000 unknown gtrids x 64 branches
(refused by the per-call branch limit, nothing written); Commits and Aborts of made-up gtrids
(late: answered ABORTED by presumption, no row; too far in the future: refused); raw
undecodable bytes to every kind of method, the open health and reflection services included
(refused, logged once per peer, not per call, never with a traceback).
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from twostep.client.tpc import new_gtrid
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

RPC_TIMEOUT = 10.0
BRANCH = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")


def rows_in(log_path) -> int:
    with sqlite3.connect(log_path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM global_transactions").fetchone()
    return count


OPEN_METHODS = (
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def raw_call(
    channel: grpc.Channel, method: str, data: bytes, metadata=(), prefix="/twostep.v1."
) -> grpc.StatusCode:
    """The status of a call to `<prefix><method>` whose request message is `data`, as it is
    (every kind of method is called as unary-unary: one message out, one status back)."""
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(prefix + method)(data, metadata=metadata, timeout=10)
    return caught.value.code()


def served(call):
    """`call()`'s reply, asked again while the log's queue is full (for at most 30 s)."""
    give_up = time.monotonic() + 30
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def test_a_begin_flood_behind_a_held_writer_is_refused_and_the_queue_stays_bounded(
    coordinator_factory,
):
    # max_batch 10: the queue takes 200 rows (20 batches) of the wire's requests.
    coordinator = coordinator_factory(settings={"max_batch": 10})
    outsider = sqlite3.connect(coordinator.log_path, isolation_level=None)
    answers: dict[str, int] = {"ok": 0, "exhausted": 0}

    def flood(stub: pb_grpc.CoordinatorStub) -> None:
        for _ in range(20):
            try:
                stub.Begin(pb.BeginRequest(count=50, timeout_ms=60_000), timeout=RPC_TIMEOUT)
                answers["ok"] += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                answers["exhausted"] += 1

    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        stub.Begin(pb.BeginRequest(), timeout=RPC_TIMEOUT)
        outsider.execute("BEGIN IMMEDIATE")  # the writer waits behind this lock (busy timeout)
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: flood(stub), range(8)))
            # Begins filled their share of the queue; a client's Commit still gets in.
            minted = new_gtrid(coordinator.cluster_id, int(time.time()) + 30, minted=True)
            item = pb.CommitItem(gtrid=minted, branches=[BRANCH])
            waiting = stub.Commit.future(pb.CommitRequest(transactions=[item]), timeout=30)
            time.sleep(0.3)
        finally:
            outsider.execute("ROLLBACK")
            outsider.close()
        assert waiting.result().decisions[0].state == pb.TRANSACTION_STATE_COMMITTED
        assert answers["exhausted"] > 0
        # The writer holds one request (50 rows); Begins may fill an eighth of the 200-row
        # queue (25 rows), taken by the one request queued when it was empty.
        assert answers["ok"] <= 2
        # Once the writer moved the queue on, another client is served.
        begin = pb.BeginRequest(timeout_ms=30_000)
        (started,) = served(lambda: stub.Begin(begin, timeout=RPC_TIMEOUT)).transactions
        item = pb.CommitItem(gtrid=started.gtrid, branches=[BRANCH])
        commit = pb.CommitRequest(transactions=[item])
        decided = served(lambda: stub.Commit(commit, timeout=RPC_TIMEOUT))
        assert decided.decisions[0].state == pb.TRANSACTION_STATE_COMMITTED
    assert rows_in(coordinator.log_path) <= 3 + 50 * answers["ok"]


def test_one_commit_of_1000_unknown_gtrids_with_64_branches_each_is_refused_unrecorded(
    coordinator,
):
    deadline_s = int(time.time()) + 20
    branches = [pb.Branch(resource=f"r{i}", bqual=f"r{i}", dialect="mysql") for i in range(64)]
    items = [
        pb.CommitItem(gtrid=new_gtrid(coordinator.cluster_id, deadline_s), branches=branches)
        for _ in range(1000)
    ]
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Commit(pb.CommitRequest(transactions=items), timeout=RPC_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "64000 branches in all, at most 4096" in refused.value.details()
        stub.Begin(pb.BeginRequest(), timeout=RPC_TIMEOUT)  # a row to wait for
    deadline = time.monotonic() + 10
    while rows_in(coordinator.log_path) == 0:  # Begin's row is written without waiting
        assert time.monotonic() < deadline, "the Begin's row was not written"
        time.sleep(0.02)
    assert rows_in(coordinator.log_path) == 1


@pytest.mark.parametrize("minted", [False, True], ids=["begin-issued", "client-made"])
def test_commit_and_abort_of_unknown_gtrids_past_their_deadline_are_aborted_without_a_row(
    coordinator, minted
):
    late = int(time.time()) - 5
    commit_gtrid = new_gtrid(coordinator.cluster_id, late, minted=minted)
    abort_gtrid = new_gtrid(coordinator.cluster_id, late, minted=minted)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        item = pb.CommitItem(gtrid=commit_gtrid, branches=[BRANCH])
        committed = stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        aborted = stub.Abort(
            pb.AbortRequest(transactions=[pb.AbortItem(gtrid=abort_gtrid, branches=[BRANCH])]),
            timeout=RPC_TIMEOUT,
        )
        for (decision,) in (committed.decisions, aborted.decisions):
            assert decision.state == pb.TRANSACTION_STATE_ABORTED
            assert decision.reason == "deadline passed"
        # Asked again: the same answer, still by presumption.
        again = stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        assert again.decisions[0].state == pb.TRANSACTION_STATE_ABORTED
    assert coordinator.get(commit_gtrid) is None
    assert coordinator.get(abort_gtrid) is None
    assert rows_in(coordinator.log_path) == 0


def test_unknown_gtrids_before_their_deadline_are_still_recorded(coordinator):
    """The presumption is only for late ones: an Abort must hold against a later Commit, and
    a client-made gtrid's Commit is its only record."""
    soon = int(time.time()) + 30
    aborted_gtrid = new_gtrid(coordinator.cluster_id, soon, minted=True)
    committed_gtrid = new_gtrid(coordinator.cluster_id, soon, minted=True)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=aborted_gtrid, reason="no")])
        stub.Abort(abort, timeout=RPC_TIMEOUT)
        for gtrid in (aborted_gtrid, committed_gtrid):
            item = pb.CommitItem(gtrid=gtrid, branches=[BRANCH])
            stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
    assert coordinator.get(aborted_gtrid).state_name == "ABORTED"
    assert coordinator.get(committed_gtrid).state_name == "COMMITTED"


def test_a_gtrid_whose_deadline_no_coordinator_would_give_is_refused_in_commit_and_abort(
    coordinator,
):
    far = int(time.time()) + 86_400
    gtrid = new_gtrid(coordinator.cluster_id, far)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        commit = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[BRANCH])])
        abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=gtrid)])
        for call, request in ((stub.Commit, commit), (stub.Abort, abort)):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=RPC_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert coordinator.get(gtrid) is None


def test_undecodable_requests_are_refused_and_logged_once_per_peer_not_per_call(
    coordinator_factory,
):
    coordinator = coordinator_factory(settings={"client_token": "client-token-0123456789abcdef"})
    garbage = b"\xff\xff\xff\xff"
    bearer = (("authorization", "Bearer client-token-0123456789abcdef"),)
    with grpc.insecure_channel(coordinator.address) as channel:
        for _ in range(30):
            for method in ("Coordinator/Commit", "Coordinator/Abort", "Coordinator/Begin"):
                assert raw_call(channel, method, garbage, bearer) == (
                    grpc.StatusCode.INVALID_ARGUMENT
                )
            # Anonymous: refused before its bytes are decoded at all.
            for method in ("Coordinator/Commit", "Admin/Status"):
                assert raw_call(channel, method, garbage) == grpc.StatusCode.UNAUTHENTICATED
            # The open services decode the same way.
            for method in OPEN_METHODS:
                assert raw_call(channel, method, garbage, prefix="/") == (
                    grpc.StatusCode.INVALID_ARGUMENT
                )
        # ... and still answer a request that is one.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = reflection.ServerReflectionInfo(iter([listing]), timeout=RPC_TIMEOUT)
        assert "twostep.v1.Coordinator" in {s.name for s in reply.list_services_response.service}
    coordinator.wait_for_output("undecodable requests refused")
    coordinator.wait_for_output('msg="call refused"')
    assert coordinator.output.count("undecodable requests refused") == 1
    assert coordinator.output.count('msg="call refused"') == 1  # 60 refusals, one line
    assert "Traceback" not in coordinator.output
