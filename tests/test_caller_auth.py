"""Who may call the coordinator: client and admin tokens, the insecure mode, message sizes.

Issue 11's input: a client dies after its PostgreSQL branch prepared and before its MariaDB one
did; a second process without credentials lists the ACTIVE transactions and commits the
PostgreSQL branch alone (or acks it as one-phase, or aborts it). With a client token
configured every such call is refused before it changes anything, and the transfer stays
atomic (the bank invariants of the crash suite).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from bank import MARIA, PG, Bank
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twostep.client import ChannelConfig
from twostep.client.tpc.failpoints import BETWEEN_PREPARES
from twostep.v1 import admin_pb2 as admin_pb
from twostep.v1 import admin_pb2_grpc as admin_grpc
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

CLIENT_TOKEN = "client-token-for-the-tests-0123456789"
RECOVERY = {"recovery_interval_s": 30, "recovery_grace_s": 0, "kill_grace_s": 1}
RPC_TIMEOUT = 10.0
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def bank(pg, maria, pg_config, maria_config, tmp_path) -> Iterator[Bank]:
    bank = Bank(pg, maria, pg_config, maria_config, tmp_path / "bank")
    yield bank
    bank.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_a_peer_without_credentials_cannot_tear_a_transfer(bank, coordinator_factory):
    args = bank.coordinator_args(**RECOVERY, client_token=CLIENT_TOKEN)
    coordinator = coordinator_factory(bank.coordinator_dir, args=args)
    worker = bank.worker(
        coordinator,
        failpoints=BETWEEN_PREPARES,
        timeout=1.5,
        env={"TWOSTEP_CLIENT_TOKEN": CLIENT_TOKEN},
    )
    assert worker.wait_exit(30) == -9, worker.output
    (transfer,) = bank.journal().transfers.values()
    gtrid = transfer.gtrid
    assert gtrid is not None
    assert {x.resource for _, x in bank.prepared_branches() if x.gtrid == gtrid} == {PG}

    pg_branch = pb.Branch(resource=PG, bqual=PG, dialect="postgresql")
    commit = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[pg_branch])])
    ack = pb.AckRequest(transactions=[pb.AckItem(gtrid=gtrid, one_phase_commit=True)])
    abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=gtrid, reason="mine now")])
    listing = pb.ListTransactionsRequest(states=[pb.TRANSACTION_STATE_ACTIVE])
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        for metadata in ((), bearer("a-guessed-token-that-is-long-enough")):
            for call, request in (
                (stub.ListTransactions, listing),
                (stub.Commit, commit),
                (stub.Ack, ack),
                (stub.Abort, abort),
                (stub.GetTransaction, pb.GetTransactionRequest(gtrid=gtrid)),
            ):
                assert code_of(
                    lambda c=call, r=request, m=metadata: c(r, metadata=m, timeout=RPC_TIMEOUT)
                ) == (UNAUTHENTICATED)
        # A client may make its own calls, but the listing of everyone's is for admins.
        client = bearer(CLIENT_TOKEN)
        assert code_of(
            lambda: stub.ListTransactions(listing, metadata=client, timeout=RPC_TIMEOUT)
        ) == (PERMISSION_DENIED)

    coordinator.channel = ChannelConfig(token=CLIENT_TOKEN)
    assert coordinator.get(gtrid) is None  # nothing of the refused calls was recorded
    bank.recover(coordinator)
    assert bank.violations(coordinator) == []
    assert coordinator.get(gtrid).state_name == "ABORTED"
    assert transfer.id not in bank.transfer_ids()
    assert MARIA not in {x.resource for _, x in bank.prepared_branches()}


def test_client_and_admin_tokens_open_their_own_calls_only(coordinator_factory):
    coordinator = coordinator_factory(settings={"client_token": CLIENT_TOKEN})
    admin_token = (coordinator.data_dir / "admin-token").read_text().strip()
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        admin = admin_grpc.AdminStub(channel)
        begin = pb.BeginRequest(timeout_ms=5000)
        assert code_of(lambda: stub.Begin(begin, timeout=RPC_TIMEOUT)) == UNAUTHENTICATED
        (started,) = stub.Begin(begin, metadata=bearer(CLIENT_TOKEN), timeout=10).transactions
        stub.Begin(begin, metadata=bearer(admin_token), timeout=10)  # an admin is a client too
        status = admin_pb.StatusRequest()
        assert code_of(lambda: admin.Status(status, timeout=10)) == UNAUTHENTICATED
        wrong = bearer("not-the-admin-token-0123456789")
        with pytest.raises(grpc.RpcError) as error:
            admin.Status(status, metadata=wrong, timeout=10)
        assert error.value.code() == UNAUTHENTICATED
        assert "not the admin token" in error.value.details()
        as_client = bearer(CLIENT_TOKEN)
        assert code_of(lambda: admin.Status(status, metadata=as_client, timeout=10)) == (
            PERMISSION_DENIED
        )
        admin.Status(status, metadata=bearer(admin_token), timeout=10)
        listing = pb.ListTransactionsRequest()
        listed = stub.ListTransactions(listing, metadata=bearer(admin_token), timeout=10)
        assert started.gtrid in {t.gtrid for t in listed.transactions}
    assert 'msg="admin call" rpc=Status caller="admin token"' in coordinator.output


def test_on_loopback_without_credentials_every_caller_is_a_client_and_a_warning_says_so(
    coordinator,
):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        stub.Begin(pb.BeginRequest(), timeout=RPC_TIMEOUT)
        listing = pb.ListTransactionsRequest()
        # Unauthenticated, so not denied but asked for credentials.
        assert code_of(lambda: stub.ListTransactions(listing, timeout=10)) == UNAUTHENTICATED
    assert "callers are not authenticated" in coordinator.output


def test_a_plain_text_port_on_every_interface_is_refused_unless_allow_insecure(
    coordinator_factory,
):
    exposed = coordinator_factory(start=False, args=["--listen", "0.0.0.0:0"])
    with pytest.raises(RuntimeError, match="exited with 2"):
        exposed.start()
    assert "refusing to listen on 0.0.0.0:0 without TLS" in exposed.output
    assert "allow_insecure" in exposed.output
    allowed = coordinator_factory(args=["--listen", "0.0.0.0:0"], settings={"allow_insecure": True})
    assert "INSECURE (allow_insecure)" in allowed.output
    with grpc.insecure_channel(allowed.address) as channel:
        pb_grpc.CoordinatorStub(channel).Describe(pb.DescribeRequest(), timeout=RPC_TIMEOUT)


def test_an_oversize_request_is_refused_and_the_server_keeps_serving(coordinator_factory):
    coordinator = coordinator_factory(settings={"max_message_bytes": 64 * 1024})
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        (started,) = stub.Begin(pb.BeginRequest(timeout_ms=10_000), timeout=10).transactions
        huge = pb.AbortItem(gtrid=started.gtrid, reason="x" * (100 * 1024))
        request = pb.AbortRequest(transactions=[huge])
        assert code_of(lambda: stub.Abort(request, timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
        item = pb.CommitItem(gtrid=started.gtrid, branches=[branch])
        decided = stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        assert decided.decisions[0].state == pb.TRANSACTION_STATE_COMMITTED  # not aborted
