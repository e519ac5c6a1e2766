"""TLS and mutual TLS on the coordinator's port, against real coordinator processes.

Certificates are made here (tls_certs.Pki). One coordinator speaks mutual TLS for the whole
module (client certificates from `pki`, CN=ops an admin); the start-up checks use their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from tls_certs import Pki

from twostep.client import (
    ChannelConfig,
    ConnectionManager,
    CoordinatorUnavailable,
    get_connection,
    global_transaction,
)
from twostep.client._cli import cli
from twostep.client.tpc import new_gtrid, parse_gtrid
from twostep.testing import CoordinatorProcess, coordinator_processes
from twostep.v1 import admin_pb2 as admin_pb
from twostep.v1 import admin_pb2_grpc as admin_grpc
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

RPC_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory) -> Iterator[CoordinatorProcess]:
    """A coordinator that wants a client certificate from `pki`; CN=ops is an admin."""
    admin = pki.client("ops")
    settings = {
        "tls_cert_file": str(pki.server.cert),
        "tls_key_file": str(pki.server.key),
        "tls_client_ca_file": str(pki.ca),
        "tls_admin_names": ["ops", "admin.example"],
    }
    channel = ChannelConfig(pki.ca, admin.cert, admin.key)
    with coordinator_processes(tmp_path_factory.mktemp("mtls")) as factory:
        yield factory(settings=settings, channel=channel)


def channel_of(pki: Pki, cn: str | None, address: str, ca: Path | None = None) -> grpc.Channel:
    """A TLS channel trusting `ca` (default: pki's CA), with a client certificate CN=cn."""
    cert = pki.client(cn) if cn else None
    config = ChannelConfig(ca or pki.ca, cert and cert.cert, cert and cert.key)
    return config.open(address)


def describe(channel: grpc.Channel) -> pb.DescribeResponse:
    return pb_grpc.CoordinatorStub(channel).Describe(pb.DescribeRequest(), timeout=RPC_TIMEOUT)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


# -- the handshake -----------------------------------------------------------------------------


def test_a_client_certificate_from_the_ca_completes_the_handshake(mtls, pki):
    with channel_of(pki, "app", mtls.address) as channel:
        assert describe(channel).cluster_id == mtls.cluster_id


def test_a_client_trusting_another_ca_fails_the_handshake(mtls, pki, tmp_path):
    other = Pki(tmp_path / "other")
    app = pki.client("app")  # a valid client certificate: only the server's is not trusted
    config = ChannelConfig(other.ca, app.cert, app.key)
    with config.open(mtls.address) as channel:
        assert code_of(lambda: describe(channel)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls, pki):
    with channel_of(pki, None, mtls.address) as channel:
        assert code_of(lambda: describe(channel)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(mtls, pki, tmp_path):
    stranger = Pki(tmp_path / "other").client("ops")  # even with an admin's name
    config = ChannelConfig(pki.ca, stranger.cert, stranger.key)
    with config.open(mtls.address) as channel:
        assert code_of(lambda: describe(channel)) == grpc.StatusCode.UNAVAILABLE


def test_plain_text_gets_no_answer_from_a_tls_port(mtls):
    with grpc.insecure_channel(mtls.address) as channel:
        assert code_of(lambda: describe(channel)) == grpc.StatusCode.UNAVAILABLE


# -- who is an admin ---------------------------------------------------------------------------


def test_a_plain_client_certificate_may_not_list_or_call_admin(mtls, pki):
    with channel_of(pki, "app", mtls.address) as channel:
        listing = pb_grpc.CoordinatorStub(channel).ListTransactions
        assert code_of(lambda: listing(pb.ListTransactionsRequest(), timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        status = admin_grpc.AdminStub(channel).Status
        assert code_of(lambda: status(admin_pb.StatusRequest(), timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    assert "caller=" in mtls.wait_for_output("call refused")


def test_a_gtrid_belongs_to_its_certificates_identity_and_another_certificate_is_refused(mtls, pki):
    address = mtls.address
    with (
        channel_of(pki, "app", address) as app,
        channel_of(pki, "billing", address) as other,
        channel_of(pki, "ops", address) as admin,
    ):
        owner = describe(app).owner_tag
        assert describe(other).owner_tag != owner
        with channel_of(pki, "app", address) as renewed:  # a new certificate, the same name
            assert describe(renewed).owner_tag == owner
        (begun,) = pb_grpc.CoordinatorStub(app).Begin(pb.BeginRequest(), timeout=10).transactions
        assert parse_gtrid(begun.gtrid).owner == owner
        gtrid = new_gtrid(mtls.cluster_id, int(time.time()) + 30, minted=True, owner=owner)
        branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
        commit = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[branch])])
        get = pb.GetTransactionRequest(gtrid=gtrid)
        theirs, admins = pb_grpc.CoordinatorStub(other), pb_grpc.CoordinatorStub(admin)
        assert code_of(lambda: theirs.Commit(commit, timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: theirs.GetTransaction(get, timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: admins.GetTransaction(get, timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.NOT_FOUND  # nothing recorded for the refused Commit
        )
        decided = pb_grpc.CoordinatorStub(app).Commit(commit, timeout=RPC_TIMEOUT)
        assert decided.decisions[0].state == pb.TRANSACTION_STATE_COMMITTED
        shown = admins.GetTransaction(get, timeout=RPC_TIMEOUT)  # an admin may read any
        assert shown.state == pb.TRANSACTION_STATE_COMMITTED


@pytest.mark.parametrize(
    "cn, dns", [("ops", None), ("deploy-bot", "admin.example")], ids=["by CN", "by SAN"]
)
def test_an_admin_certificate_lists_and_calls_admin_without_a_token_and_is_audited(
    mtls, pki, cn, dns
):
    admin = pki.client(cn, dns=dns)
    with ChannelConfig(pki.ca, admin.cert, admin.key).open(mtls.address) as channel:
        listing = pb_grpc.CoordinatorStub(channel).ListTransactions
        listing(pb.ListTransactionsRequest(), timeout=RPC_TIMEOUT)
        status = admin_grpc.AdminStub(channel).Status(admin_pb.StatusRequest(), timeout=10)
    assert status.cluster_id == mtls.cluster_id
    mtls.wait_for_output("rpc=ListTransactions caller=")
    mtls.wait_for_output("rpc=Status caller=")
    audited = [line for line in mtls.output.splitlines() if 'msg="admin call"' in line]
    assert any("rpc=Status" in line and f"CN={cn}" in line for line in audited), audited
    assert any("rpc=ListTransactions" in line and f"CN={cn}" in line for line in audited)


def test_the_admin_cli_speaks_mutual_tls_with_an_admin_certificate(mtls, pki, monkeypatch):
    monkeypatch.chdir(pki.directory)  # no admin-token file here: the certificate must do
    admin = pki.client("ops")
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(admin.cert), "--tls-key", str(admin.key)]
    result = CliRunner().invoke(cli, ["--coordinator", mtls.address, *tls, "--json", "status"])
    assert result.exit_code == 0, result.output
    app = pki.client("app")
    plain = ["--tls-ca", str(pki.ca), "--tls-cert", str(app.cert), "--tls-key", str(app.key)]
    refused = CliRunner().invoke(cli, ["--coordinator", mtls.address, *plain, "status"])
    assert refused.exit_code != 0 and "PERMISSION_DENIED" in refused.output


def test_the_cli_without_tls_options_says_the_coordinator_listens_and_wants_tls(mtls, pki):
    result = CliRunner().invoke(cli, ["--coordinator", mtls.address, "--token", "t", "status"])
    assert result.exit_code == 3, result.output
    assert f"coordinator at {mtls.address} accepts connections" in result.output
    assert "if it speaks TLS, pass --tls-ca" in result.output
    assert "unreachable at" not in result.output


def test_the_cli_trusting_another_ca_is_told_to_check_its_tls_options(mtls, pki, tmp_path):
    other = Pki(tmp_path / "other")
    admin = pki.client("ops")
    tls = ["--tls-ca", str(other.ca), "--tls-cert", str(admin.cert), "--tls-key", str(admin.key)]
    result = CliRunner().invoke(cli, ["--coordinator", mtls.address, *tls, "status"])
    assert result.exit_code == 3, result.output
    assert "accepts connections" in result.output
    assert "check that --tls-ca is the CA of its certificate" in result.output


def test_the_health_check_asks_over_tls_with_the_client_environment(mtls, pki):
    probe = pki.client("probe")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
    command = [sys.executable, "-m", "twostep.coordinator", "--health-check", mtls.address]
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    env |= {
        "TWOSTEP_COORDINATOR_CA": str(pki.ca),
        "TWOSTEP_COORDINATOR_CERT": str(probe.cert),
        "TWOSTEP_COORDINATOR_KEY": str(probe.key),
    }
    secure = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert (secure.returncode, secure.stdout.strip()) == (0, "SERVING"), secure.stderr


# -- a transaction over mutual TLS -------------------------------------------------------------


def test_global_transaction_over_mutual_tls_commits_on_both_databases(
    pki, pg, maria, pg_config, maria_config, coordinator_factory
):
    settings = {
        "tls_cert_file": str(pki.server.cert),
        "tls_key_file": str(pki.server.key),
        "tls_client_ca_file": str(pki.ca),
        "recovery_grace_s": 0,
    }
    resources = {"orders": pg_config, "billing": maria_config}
    coordinator = coordinator_factory(settings=settings, resources=resources)
    app = pki.client("app")
    channel = ChannelConfig(pki.ca, app.cert, app.key)
    ConnectionManager.configure("orders", pg_config)
    ConnectionManager.configure("billing", maria_config)
    try:
        get_connection("orders").execute("CREATE TABLE t (id INT PRIMARY KEY)")
        get_connection("billing").execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
        with global_transaction(coordinator.address, timeout=10, channel=channel) as gtx:
            get_connection("orders").execute("INSERT INTO t VALUES (?)", [1])
            get_connection("billing").execute("INSERT INTO t VALUES (?)", [1])
        for name in ("orders", "billing"):
            assert get_connection(name).execute("SELECT id FROM t") == [(1,)]
    finally:
        ConnectionManager.close_all()
    coordinator.channel = channel
    assert gtx.gtrid is not None
    assert coordinator.get(gtx.gtrid).state_name == "COMMITTED"


def test_global_transaction_without_the_coordinators_ca_commits_nothing(
    mtls, pki, pg, pg_config, tmp_path
):
    other = Pki(tmp_path / "other")
    app = pki.client("app")
    ConnectionManager.configure("orders", pg_config)
    ConnectionManager.configure("orders2", pg_config)
    try:
        get_connection("orders").execute("CREATE TABLE u (id INT PRIMARY KEY)")
        channel = ChannelConfig(other.ca, app.cert, app.key)
        with (
            pytest.raises(CoordinatorUnavailable),
            global_transaction(mtls.address, timeout=3, channel=channel),
        ):
            get_connection("orders").execute("INSERT INTO u VALUES (?)", [1])
            get_connection("orders2").execute("INSERT INTO u VALUES (?)", [2])
        assert get_connection("orders").execute("SELECT id FROM u") == []
    finally:
        ConnectionManager.close_all()


# -- start-up checks ---------------------------------------------------------------------------


def refused_start(coordinator_factory, settings: dict[str, object]) -> str:
    proc = coordinator_factory(start=False, settings=settings)
    with pytest.raises(RuntimeError, match="exited with 2"):
        proc.start()
    return proc.output


def test_missing_unreadable_or_mismatched_tls_files_stop_the_start_with_exit_2(
    pki, coordinator_factory, tmp_path
):
    other = pki.client("someone")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server = {"tls_cert_file": str(pki.server.cert), "tls_key_file": str(pki.server.key)}
    missing = {**server, "tls_cert_file": str(tmp_path / "nope.pem")}
    assert "cannot read tls_cert_file" in refused_start(coordinator_factory, missing)
    assert "is not PEM" in refused_start(
        coordinator_factory, {**server, "tls_key_file": str(garbage)}
    )
    mismatched = {**server, "tls_key_file": str(other.key)}
    assert "not a certificate chain and its private key" in refused_start(
        coordinator_factory, mismatched
    )
    assert "tls_client_ca_file" in refused_start(
        coordinator_factory, {**server, "tls_client_ca_file": str(garbage)}
    )
    assert "set together" in refused_start(
        coordinator_factory, {"tls_key_file": str(pki.server.key)}
    )
