"""The coordinator's capacity is not for a peer to take: stalled calls, idle connections.

Issue 11's inputs against a real coordinator process: calls that send their headers and never
their message (one connection, far more of them than worker threads), then another client's
Begin + Commit and the health check; Commits waiting for a held log writer, more of them than
worker threads, then a read; hundreds of idle connections under a low descriptor
limit, then a new client. The answers are checked, never how fast they came (the generous
deadlines only keep a regression from hanging the suite).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

RPC_TIMEOUT = 10.0
#: A channel of its own: grpcio shares one connection among channels to the same address.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def never_sends(release: threading.Event) -> Iterator[bytes]:
    """A request stream whose message never comes (until `release`): headers only."""
    release.wait()
    yield from ()


def answers_begin_commit_and_health(address: str) -> None:
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        begun = stub.Begin(pb.BeginRequest(timeout_ms=30_000), timeout=RPC_TIMEOUT)
        (started,) = begun.transactions
        branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
        item = pb.CommitItem(gtrid=started.gtrid, branches=[branch])
        decided = stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        assert decided.decisions[0].state == pb.TRANSACTION_STATE_COMMITTED
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_connections(address: str, count: int) -> list[grpc.Channel]:
    """`count` connections that each made one call and then do nothing."""
    channels = []
    for _ in range(count):
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        pb_grpc.CoordinatorStub(channel).Describe(pb.DescribeRequest(), timeout=RPC_TIMEOUT)
        channels.append(channel)
    return channels


def test_stalled_calls_on_one_connection_leave_other_clients_and_the_health_check_served(
    coordinator_factory,
):
    coordinator = coordinator_factory(settings={"workers": 4})
    release = threading.Event()
    with grpc.insecure_channel(coordinator.address, options=OWN_CONNECTION) as attacker:
        for method in ("Commit", "Begin", "Abort"):
            stalled = attacker.stream_unary(f"/twostep.v1.Coordinator/{method}")
            calls = [stalled.future(never_sends(release)) for _ in range(40)]
        grpc.channel_ready_future(attacker).result(timeout=RPC_TIMEOUT)
        time.sleep(0.5)  # let the headers of all 120 reach the server
        try:
            answers_begin_commit_and_health(coordinator.address)
        finally:
            release.set()
    assert all(call.done() for call in calls)


def test_commits_waiting_for_the_disk_hold_no_worker_thread(coordinator_factory):
    # One worker thread, and eight Commits waiting for a held log writer: a read, which needs
    # the worker, is still answered (a Commit used to hold a worker until its fsync).
    coordinator = coordinator_factory(settings={"workers": 1})
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        begun = stub.Begin(pb.BeginRequest(count=8, timeout_ms=60_000), timeout=RPC_TIMEOUT)
        gtrids = [started.gtrid for started in begun.transactions]
        asked = pb.GetTransactionRequest(gtrid=gtrids[0])
        deadline = time.monotonic() + RPC_TIMEOUT
        while True:  # Begin returns before its row is written
            try:
                stub.GetTransaction(asked, timeout=RPC_TIMEOUT)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
                time.sleep(0.01)
        outsider = sqlite3.connect(coordinator.log_path, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")  # the writer waits behind this lock (busy timeout)
        try:
            waiting = [
                stub.Commit.future(
                    pb.CommitRequest(transactions=[pb.CommitItem(gtrid=g, branches=[branch])]),
                    timeout=30,
                )
                for g in gtrids
            ]
            time.sleep(0.3)  # let them reach the server
            record = stub.GetTransaction(asked, timeout=5)
            assert record.state == pb.TRANSACTION_STATE_ACTIVE
            assert not any(call.done() for call in waiting)
        finally:
            outsider.execute("ROLLBACK")
            outsider.close()
        states = {call.result().decisions[0].state for call in waiting}
        assert states == {pb.TRANSACTION_STATE_COMMITTED}


def test_a_commit_whose_caller_gave_up_is_still_decided_and_the_writer_goes_on(
    coordinator_factory,
):
    # The caller's deadline passes while its proposal waits for a held log writer: grpc
    # cancels the call's task, but the queued proposal is written all the same, and the
    # writer answers later calls (a cancelled future answered by the writer would kill it).
    coordinator = coordinator_factory()
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        begun = stub.Begin(pb.BeginRequest(count=2, timeout_ms=60_000), timeout=RPC_TIMEOUT)
        first, second = (started.gtrid for started in begun.transactions)

        def commit(gtrid: str, timeout: float) -> pb.CommitResponse:
            request = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[branch])])
            return stub.Commit(request, timeout=timeout)

        outsider = sqlite3.connect(coordinator.log_path, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")  # the writer waits behind this lock (busy timeout)
        try:
            with pytest.raises(grpc.RpcError) as gave_up:
                commit(first, timeout=2)  # long enough to be queued, the writer holds 10 s
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            outsider.execute("ROLLBACK")
            outsider.close()
        assert commit(second, RPC_TIMEOUT).decisions[0].state == pb.TRANSACTION_STATE_COMMITTED
        record = stub.GetTransaction(pb.GetTransactionRequest(gtrid=first), timeout=RPC_TIMEOUT)
        assert record.state == pb.TRANSACTION_STATE_COMMITTED  # written though nobody waited
        assert commit(first, RPC_TIMEOUT).decisions[0].state == pb.TRANSACTION_STATE_COMMITTED


def test_idle_connections_are_closed_and_give_their_descriptors_back(coordinator_factory):
    # Idle for 3 s: long enough that the first connection is not closed before the hundredth is
    # open on a slow machine.
    coordinator = coordinator_factory(settings={"connection_idle_s": 3})
    assert coordinator.pid is not None
    before = open_descriptors(coordinator.pid)
    channels = idle_connections(coordinator.address, 100)
    try:
        assert open_descriptors(coordinator.pid) >= before + 100
        deadline = time.monotonic() + 30
        while open_descriptors(coordinator.pid) > before + 5:
            assert time.monotonic() < deadline, "the idle connections were not closed"
            time.sleep(0.2)
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture
def low_descriptor_limit() -> Iterator[int]:
    """The soft descriptor limit a process started now inherits: 256 (this one's is restored
    once the test started what it needs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_hundreds_of_idle_connections_under_a_low_descriptor_limit_leave_new_clients_served(
    coordinator_factory, low_descriptor_limit
):
    coordinator = coordinator_factory()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ours = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (ours, hard))  # for this side's connections
    channels = idle_connections(coordinator.address, low_descriptor_limit + 100)
    try:
        answers_begin_commit_and_health(coordinator.address)
    finally:
        for channel in channels:
            channel.close()


def test_connections_beyond_max_connections_are_refused_and_others_served_once_idle_ones_close(
    coordinator_factory,
):
    coordinator = coordinator_factory(settings={"max_connections": 10, "connection_idle_s": 3})
    channels = idle_connections(coordinator.address, 10)
    try:
        with grpc.insecure_channel(coordinator.address, options=OWN_CONNECTION) as late:
            describe = pb_grpc.CoordinatorStub(late).Describe
            with pytest.raises(grpc.RpcError) as refused:
                describe(pb.DescribeRequest(), timeout=RPC_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # The idle ones are closed after 3 s; then the late client is served (when its
            # channel next tries to connect: grpc's backoff, 1 s growing 1.6x, with jitter).
            describe(pb.DescribeRequest(), timeout=30, wait_for_ready=True)
    finally:
        for channel in channels:
            channel.close()
