"""The admin CLI `twostep`: exit codes, validation before any RPC, tables and JSON."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from click.testing import CliRunner
from test_recovery import (
    TOKEN,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    in_process_fixture,  # noqa: F401 - the fixture "in_process"
    prepare,
)

from twostep.client._cli import cli
from twostep.client.tpc import new_gtrid
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./twostep-data/admin-token lying around
    for name in ("TWOSTEP_COORDINATOR", "TWOSTEP_ADMIN_TOKEN", "TWOSTEP_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def begin_and_commit(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = _pb_grpc.CoordinatorStub(channel)
        gtrid = stub.Begin(_pb.BeginRequest(timeout_ms=10_000)).transactions[0].gtrid
        branch = _pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
        stub.Commit(
            _pb.CommitRequest(transactions=[_pb.CommitItem(gtrid=gtrid, branches=[branch])])
        )
    return gtrid


def test_list_shows_committing_transactions_as_json_and_as_a_table(run, coordinator):
    gtrid = begin_and_commit(coordinator.address)
    admin = ("--token-file", str(coordinator.data_dir / "admin-token"))  # listing is for admins
    result = run(
        "--coordinator", coordinator.address, *admin, "--json", "list", "--state", "committing"
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["transactions"]
    assert [(t["gtrid"], t["state"]) for t in listed] == [(gtrid, "TRANSACTION_STATE_COMMITTED")]
    table = run("--coordinator", coordinator.address, *admin, "list")
    assert table.exit_code == 0
    assert "COMMITTED" in table.output and "orders" in table.output


def test_older_than_filters_out_young_transactions(run, coordinator):
    begin_and_commit(coordinator.address)
    admin = ("--token-file", str(coordinator.data_dir / "admin-token"))
    result = run(
        "--coordinator", coordinator.address, *admin, "--json", "list", "--older-than", "1h"
    )
    assert result.exit_code == 0
    assert json.loads(result.output).get("transactions", []) == []


@pytest.mark.parametrize("bad", ["5", "5 minutes", "-5m", "5w"])
def test_malformed_durations_are_usage_errors(run, bad):
    result = CliRunner().invoke(cli, ["list", "--older-than", bad])
    assert result.exit_code == 2
    assert "90s or 5m" in result.output


@pytest.mark.parametrize("bad", ["x", "it's", "ts1.main.0." + "a" * 23, "a\x00b"])
def test_malformed_gtrids_are_usage_errors_before_any_rpc(run, bad):
    # No coordinator listens on port 9: reaching it would exit 3, not 2.
    result = CliRunner().invoke(cli, ["--coordinator", "127.0.0.1:9", "--token", "t", "show", bad])
    assert result.exit_code == 2
    assert "invalid gtrid" in result.output


def test_resolve_needs_an_outcome_and_a_reason(run):
    gtrid = "ts1.main.0." + "a" * 24
    no_reason = CliRunner().invoke(cli, ["--token", "t", "resolve", gtrid, "--commit"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    no_outcome = CliRunner().invoke(cli, ["--token", "t", "resolve", gtrid, "--reason", "x"])
    assert no_outcome.exit_code == 2 and "--commit or --abort" in no_outcome.output


def test_unreachable_coordinator_exits_3(run):
    result = CliRunner().invoke(cli, ["--coordinator", "127.0.0.1:9", "--token", "t", "list"])
    assert result.exit_code == 3
    assert "UNAVAILABLE" in result.output


def test_admin_command_without_a_token_exits_5_before_any_rpc(run):
    result = CliRunner().invoke(cli, ["--coordinator", "127.0.0.1:9", "status"])
    assert result.exit_code == 5
    assert "admin token" in result.output


# -- against a coordinator with both databases registered (helpers from test_recovery) -------


def test_an_operator_sees_and_resolves_an_orphan_with_the_cli(run, in_process, dbs):
    c = in_process()
    admin = ("--coordinator", c.server.address, "--token", TOKEN)
    gtrid = new_gtrid(c.server.settings.cluster_id, int(time.time()) + 3600)
    prepare(dbs, "orders", gtrid, 1)
    prepare(dbs, "billing", gtrid, 1)

    scanned = json.loads(run(*admin, "--json", "scan", "billing").output)["xids"]
    assert [(x["gtrid"], x["owner"]) for x in scanned] == [(gtrid, "ours")]
    shown = run(*admin, "show", gtrid)
    assert shown.exit_code == 0
    assert "orders" in shown.output and "billing" in shown.output and "prepared" in shown.output
    status = run(*admin, "status")
    assert status.exit_code == 0 and "billing" in status.output and "password" not in status.output

    # Not past its deadline: recovery leaves it; the operator ends it, with a reason.
    assert run(*admin, "recover").exit_code == 0
    assert {x.gtrid for x in dbs.prepared("orders")} == {gtrid}
    resolved = run(*admin, "--json", "resolve", gtrid, "--abort", "--reason", "app is gone")
    assert resolved.exit_code == 0, resolved.output
    assert json.loads(resolved.output)["decision"]["state"] == "TRANSACTION_STATE_ABORTED"
    assert dbs.prepared("orders") == dbs.prepared("billing") == set()
    # A second resolve the other way contradicts the logged decision: refused without --force.
    refused = run(*admin, "resolve", gtrid, "--commit", "--reason", "changed my mind")
    assert refused.exit_code == 1
    assert "FAILED_PRECONDITION" in refused.output
    notes = run(*admin, "show", gtrid).output
    assert "app is gone" in notes and "changed my mind" in notes


def test_a_wrong_admin_token_exits_5(run, in_process, dbs):
    c = in_process()
    result = run("--coordinator", c.server.address, "--token", "x" * 20, "status")
    assert result.exit_code == 5
    assert "UNAUTHENTICATED" in result.output
