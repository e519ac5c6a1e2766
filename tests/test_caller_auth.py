"""Who may call the coordinator: client and admin tokens, the insecure mode, message sizes,
and who may act on a gtrid (its owner's identity, or an admin).

Issue 11's input: a client dies after its PostgreSQL branch prepared and before its MariaDB one
did; a second process without credentials lists the ACTIVE transactions and commits the
PostgreSQL branch alone (or acks it as one-phase, or aborts it). With a client token
configured every such call is refused before it changes anything, and the transfer stays
atomic (the bank invariants of the crash suite). The same second process holding a client
token of its own (another identity) is refused too: the gtrid carries its owner's tag.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bank import MARIA, PG, Bank
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twostep.client import ChannelConfig
from twostep.client.tpc import new_gtrid, parse_gtrid
from twostep.client.tpc.failpoints import BETWEEN_PREPARES
from twostep.coordinator._callers import read_tokens
from twostep.coordinator._config import ConfigError
from twostep.v1 import admin_pb2 as admin_pb
from twostep.v1 import admin_pb2_grpc as admin_grpc
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

CLIENT_TOKEN = "client-token-for-the-tests-0123456789"
OTHER_TOKEN = "another-clients-token-0123456789"  # a second identity
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


def token_file(path: Path, *tokens: str) -> Path:
    path.write_text("".join(f"{token}\n" for token in tokens))
    path.chmod(0o600)
    return path


def forged_calls(stub: pb_grpc.CoordinatorStub, gtrid: str) -> list:
    """What a forger does with a dead client's gtrid: commit its PostgreSQL branch alone, ack
    it as a one-phase commit, abort it, read it (each call takes the metadata)."""
    pg_branch = pb.Branch(resource=PG, bqual=PG, dialect="postgresql")
    commit = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[pg_branch])])
    ack = pb.AckRequest(transactions=[pb.AckItem(gtrid=gtrid, one_phase_commit=True)])
    abort = pb.AbortRequest(transactions=[pb.AbortItem(gtrid=gtrid, reason="mine now")])
    return [
        lambda m, c=call, r=request: c(r, metadata=m, timeout=RPC_TIMEOUT)
        for call, request in (
            (stub.Commit, commit),
            (stub.Ack, ack),
            (stub.Abort, abort),
            (stub.GetTransaction, pb.GetTransactionRequest(gtrid=gtrid)),
        )
    ]


def assert_transfer_stays_atomic(bank: Bank, coordinator, transfer) -> None:
    coordinator.channel = ChannelConfig(token=CLIENT_TOKEN)  # the owner's identity
    assert coordinator.get(transfer.gtrid) is None  # nothing of the refused calls was recorded
    bank.recover(coordinator)
    assert bank.violations(coordinator) == []
    assert coordinator.get(transfer.gtrid).state_name == "ABORTED"
    assert transfer.id not in bank.transfer_ids()
    assert MARIA not in {x.resource for _, x in bank.prepared_branches()}


def killed_between_prepares(bank: Bank, coordinator):
    """The transfer of a worker killed after its PostgreSQL branch prepared, before MariaDB's."""
    worker = bank.worker(
        coordinator,
        failpoints=BETWEEN_PREPARES,
        timeout=1.5,
        env={"TWOSTEP_CLIENT_TOKEN": CLIENT_TOKEN},
    )
    assert worker.wait_exit(30) == -9, worker.output
    (transfer,) = bank.journal().transfers.values()
    assert transfer.gtrid is not None
    prepared = {x.resource for _, x in bank.prepared_branches() if x.gtrid == transfer.gtrid}
    assert prepared == {PG}
    return transfer


def test_a_peer_without_credentials_cannot_tear_a_transfer(bank, coordinator_factory):
    args = bank.coordinator_args(**RECOVERY, client_token=CLIENT_TOKEN)
    coordinator = coordinator_factory(bank.coordinator_dir, args=args)
    transfer = killed_between_prepares(bank, coordinator)
    listing = pb.ListTransactionsRequest(states=[pb.TRANSACTION_STATE_ACTIVE])
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        list_all = stub.ListTransactions
        for metadata in ((), bearer("a-guessed-token-that-is-long-enough")):
            assert code_of(lambda m=metadata: list_all(listing, metadata=m, timeout=10)) == (
                UNAUTHENTICATED
            )
            for call in forged_calls(stub, transfer.gtrid):
                assert code_of(lambda c=call, m=metadata: c(m)) == UNAUTHENTICATED
        # A client may make its own calls, but the listing of everyone's is for admins.
        client = bearer(CLIENT_TOKEN)
        assert code_of(
            lambda: stub.ListTransactions(listing, metadata=client, timeout=RPC_TIMEOUT)
        ) == (PERMISSION_DENIED)
    assert_transfer_stays_atomic(bank, coordinator, transfer)


def test_another_client_with_its_own_token_cannot_tear_a_transfer_nor_end_or_read_it(
    bank, coordinator_factory, tmp_path
):
    tokens = token_file(tmp_path / "client-tokens", CLIENT_TOKEN, OTHER_TOKEN)
    args = bank.coordinator_args(**RECOVERY, client_token_file=str(tokens))
    coordinator = coordinator_factory(bank.coordinator_dir, args=args)
    transfer = killed_between_prepares(bank, coordinator)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        described = {
            token: stub.Describe(pb.DescribeRequest(), metadata=bearer(token), timeout=10)
            for token in (CLIENT_TOKEN, OTHER_TOKEN)
        }
        # The client wrote its own tag into the gtrid; the other identity has another one.
        assert parse_gtrid(transfer.gtrid).owner == described[CLIENT_TOKEN].owner_tag
        assert described[OTHER_TOKEN].owner_tag != described[CLIENT_TOKEN].owner_tag
        for call in forged_calls(stub, transfer.gtrid):
            with pytest.raises(grpc.RpcError) as refused:
                call(bearer(OTHER_TOKEN))
            assert refused.value.code() == PERMISSION_DENIED
            assert "another identity" in refused.value.details()
    assert_transfer_stays_atomic(bank, coordinator, transfer)


def test_ack_as_a_one_phase_commit_is_taken_from_the_owner_or_an_admin_only(
    coordinator_factory, tmp_path
):
    tokens = token_file(tmp_path / "client-tokens", CLIENT_TOKEN, OTHER_TOKEN)
    coordinator = coordinator_factory(settings={"client_token_file": str(tokens)})
    coordinator.channel = ChannelConfig(token=CLIENT_TOKEN)  # get() as the owner
    admin_token = (coordinator.data_dir / "admin-token").read_text().strip()
    mine, theirs, admin = bearer(CLIENT_TOKEN), bearer(OTHER_TOKEN), bearer(admin_token)

    def one_phase(gtrid: str) -> pb.AckRequest:
        return pb.AckRequest(transactions=[pb.AckItem(gtrid=gtrid, one_phase_commit=True)])

    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        owner = stub.Describe(pb.DescribeRequest(), metadata=mine, timeout=10).owner_tag
        begun = stub.Begin(pb.BeginRequest(count=2), metadata=mine, timeout=10).transactions
        by_owner, by_admin = (started.gtrid for started in begun)
        assert {parse_gtrid(g).owner for g in (by_owner, by_admin)} == {owner}  # Begin's tag
        for gtrid in (by_owner, by_admin):
            coordinator.wait_for(gtrid, lambda t: t.state_name == "ACTIVE")
            assert code_of(lambda g=gtrid: stub.Ack(one_phase(g), metadata=theirs, timeout=10)) == (
                PERMISSION_DENIED
            )
        stub.Ack(one_phase(by_owner), metadata=mine, timeout=RPC_TIMEOUT)
        stub.Ack(one_phase(by_admin), metadata=admin, timeout=RPC_TIMEOUT)
        for gtrid in (by_owner, by_admin):
            assert coordinator.wait_for(gtrid, lambda t: t.state_name != "ACTIVE").state_name == (
                "COMMITTED"
            )
        # A gtrid made before owner tags is no client's: only an admin may act on it.
        untagged = new_gtrid(coordinator.cluster_id, int(time.time()) + 30, minted=True)
        ack = one_phase(untagged)
        assert code_of(lambda: stub.Ack(ack, metadata=mine, timeout=10)) == PERMISSION_DENIED
        get = pb.GetTransactionRequest(gtrid=untagged)
        assert code_of(lambda: stub.GetTransaction(get, metadata=admin, timeout=10)) == (
            grpc.StatusCode.NOT_FOUND  # the admin may read it: nothing was recorded
        )


def test_a_client_token_file_holds_one_token_per_line(tmp_path):
    listed = token_file(tmp_path / "tokens", CLIENT_TOKEN, OTHER_TOKEN)
    listed.write_text(listed.read_text() + "\n\n")  # blank lines are skipped
    assert read_tokens(listed, "client_token_file") == (CLIENT_TOKEN, OTHER_TOKEN)
    for bad in (
        [CLIENT_TOKEN, CLIENT_TOKEN],
        [CLIENT_TOKEN, "short"],
        [f"{CLIENT_TOKEN} {OTHER_TOKEN}"],
        [],
    ):
        with pytest.raises(ConfigError, match="client_token_file"):
            read_tokens(token_file(tmp_path / "bad", *bad), "client_token_file")


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
    coordinator.wait_for_output('msg="admin call" rpc=Status caller="admin token"')


def test_on_loopback_without_credentials_every_caller_is_a_client_and_a_warning_says_so(
    coordinator,
):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        stub.Begin(pb.BeginRequest(), timeout=RPC_TIMEOUT)
        listing = pb.ListTransactionsRequest()
        # Unauthenticated, so not denied but asked for credentials.
        assert code_of(lambda: stub.ListTransactions(listing, timeout=10)) == UNAUTHENTICATED
    coordinator.wait_for_output("callers are not authenticated")


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
