"""The admin CLI `twostep`: exit codes, validation before any RPC, tables and JSON."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import click
import grpc
import pytest
from click.testing import CliRunner
from test_recovery import (
    COMMITTED,
    TOKEN,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    in_process_fixture,  # noqa: F401 - the fixture "in_process"
    prepare,
)

from twostep.client._cli import ExitCode, cli
from twostep.client.tpc import new_gtrid
from twostep.client.txn_states import GROUPS, TxnState
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

GTRID = "ts1.main.0." + "a" * 24  # well-formed; no coordinator knows it


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./twostep-data/admin-token lying around
    for name in ("TWOSTEP_COORDINATOR", "TWOSTEP_ADMIN_TOKEN", "TWOSTEP_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str):
        # JSON and tables are read from `stdout` alone: a test's in-process coordinator shares it,
        # and what it writes to stderr meanwhile (grpc.aio's complaints about tasks of earlier
        # tests' servers, collected at any moment) lands in the interleaved `output`.
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


def test_list_shows_committing_transactions_as_json_and_as_a_table(run, coordinator, monkeypatch):
    # The gtrid (61 characters: a 16-character cluster id, an owner tag) is never cut; the
    # branches column follows it from 100 columns on (on 80, only the state does).
    monkeypatch.setenv("COLUMNS", "100")
    gtrid = begin_and_commit(coordinator.address)
    admin = ("--coordinator", coordinator.address, "--data-dir", str(coordinator.data_dir))
    result = run(*admin, "--json", "list", "--state", "committing")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)["transactions"]
    assert [(t["transaction"]["gtrid"], t["state"]) for t in listed] == [(gtrid, "committing")]
    table = run(*admin, "list")
    assert table.exit_code == 0
    assert "committing" in table.output and "orders" in table.output


def test_older_than_filters_out_young_transactions(run, coordinator):
    begin_and_commit(coordinator.address)
    admin = ("--coordinator", coordinator.address, "--data-dir", str(coordinator.data_dir))
    result = run(*admin, "--json", "list", "--older-than", "1h")
    assert result.exit_code == 0
    assert json.loads(result.stdout).get("transactions", []) == []


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


def every_option() -> list[tuple[list[str], click.Option]]:
    """Every option of the group and of each command, with the words that reach it."""
    found = [([], o) for o in cli.params if isinstance(o, click.Option) and o.expose_value]
    for name, command in sorted(cli.commands.items()):
        words = [name] + ["x" for p in command.params if isinstance(p, click.Argument)]
        found += [
            (words, o) for o in command.params if isinstance(o, click.Option) and o.expose_value
        ]
    return found


@pytest.mark.parametrize(
    "words, option", every_option(), ids=lambda v: v.name if isinstance(v, click.Option) else ""
)
def test_every_option_given_twice_is_a_usage_error(run, words, option):
    flag = max(option.opts, key=len)
    twice = [flag] * 2 if option.is_flag else [flag, "1", flag, "2"]
    args = [*twice, "status"] if not words else [*words, *twice]
    result = CliRunner().invoke(cli, ["--coordinator", "127.0.0.1:9", *args])
    assert result.exit_code == 2, result.output
    assert f"{flag} is given twice" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["resolve", GTRID, "--commit", "--abort", "--reason", "x"], "--commit and --abort"),
        (["resolve", GTRID, "--abort", "--reason", "x", "--commit"], "--abort and --commit"),
        (["--token", "t" * 20, "--token-file", "f", "status"], "--token and --token-file"),
        (["--token-file", "f", "--token", "t" * 20, "status"], "--token-file and --token"),
    ],
)
def test_options_that_contradict_each_other_are_usage_errors(run, args, message):
    result = CliRunner().invoke(cli, ["--coordinator", "127.0.0.1:9", *args])
    assert result.exit_code == 2, result.output
    assert f"{message} cannot be used together" in result.output


def test_resolve_needs_an_outcome_and_a_reason(run):
    gtrid = GTRID
    no_reason = CliRunner().invoke(cli, ["--token", "t", "resolve", gtrid, "--commit"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    no_outcome = CliRunner().invoke(cli, ["--token", "t", "resolve", gtrid, "--reason", "x"])
    assert no_outcome.exit_code == 2 and "--commit or --abort" in no_outcome.output


def test_unreachable_coordinator_exits_3(run):
    result = run("--coordinator", "127.0.0.1:9", "--token", TOKEN, "status")
    assert result.exit_code == 3
    assert "coordinator unreachable at 127.0.0.1:9" in result.output


def test_no_token_and_no_coordinator_says_coordinator_unreachable(run):
    result = run("--coordinator", "127.0.0.1:9", "status")
    assert result.exit_code == 3
    assert "coordinator unreachable" in result.output and "token" not in result.output


@pytest.mark.parametrize("garbage", ["garbage", "127.0.0.1", "host:99999", "a b:1", ":50051"])
def test_a_coordinator_address_that_is_not_host_port_is_a_usage_error(run, garbage):
    result = run("--coordinator", garbage, "--token", TOKEN, "status")
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output


# -- against a coordinator with both databases registered (helpers from test_recovery) -------


def test_an_operator_sees_and_resolves_an_orphan_with_the_cli(run, in_process, dbs):
    c = in_process()
    admin = ("--coordinator", c.server.address, "--token", TOKEN)
    gtrid = new_gtrid(c.server.settings.cluster_id, int(time.time()) + 3600)
    prepare(dbs, "orders", gtrid, 1)
    prepare(dbs, "billing", gtrid, 1)

    scanned = json.loads(run(*admin, "--json", "scan", "billing").stdout)["xids"]
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
    assert json.loads(resolved.stdout)["decision"]["state"] == "TRANSACTION_STATE_ABORTED"
    assert dbs.prepared("orders") == dbs.prepared("billing") == set()
    # A second resolve the other way contradicts the logged decision: refused without --force.
    refused = run(*admin, "resolve", gtrid, "--commit", "--reason", "changed my mind")
    assert refused.exit_code == 1
    assert "FAILED_PRECONDITION" in refused.output
    notes = run(*admin, "show", gtrid).output
    assert "app is gone" in notes and "changed my mind" in notes


def test_a_wrong_admin_token_is_said_to_be_refused(run, in_process, dbs):
    c = in_process()
    result = run("--coordinator", c.server.address, "--token", "x" * 20, "status")
    assert result.exit_code == 5
    assert f"{c.server.address} refused the admin token from --token" in result.output


def test_no_token_says_where_the_cli_looked_and_how_to_give_one(run, in_process, dbs, tmp_path):
    c = in_process()
    result = run("--coordinator", c.server.address, "status")
    assert result.exit_code == 5
    assert f"needs the admin token; no {tmp_path / 'twostep-data' / 'admin-token'}" in (
        result.output
    )
    assert "--token, --token-file or --data-dir" in result.output


def test_the_token_is_found_from_any_directory_through_the_data_dir(
    run, in_process, dbs, tmp_path, monkeypatch
):
    c = in_process()
    data_dir = tmp_path / "elsewhere" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "admin-token").write_text(TOKEN + "\n")
    (tmp_path / "token").write_text(TOKEN + "\n")
    address = ("--coordinator", c.server.address)
    assert run(*address, "--data-dir", str(data_dir), "status").exit_code == 0
    assert run(*address, "--token-file", str(tmp_path / "token"), "status").exit_code == 0
    monkeypatch.setenv("TWOSTEP_DATA_DIR", str(data_dir))
    assert run(*address, "status").exit_code == 0
    # What the command line names wins over the environment.
    monkeypatch.setenv("TWOSTEP_ADMIN_TOKEN", "x" * 20)
    assert run(*address, "status").exit_code == 5
    assert run(*address, "--data-dir", str(data_dir), "status").exit_code == 0
    monkeypatch.setenv("TWOSTEP_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    assert run(*address, "--token", TOKEN, "status").exit_code == 0
    missing = run(*address, "--token-file", str(tmp_path / "nope"), "status")
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_a_database_failure_during_scan_is_not_coordinator_unreachable(
    run, in_process, dbs, tmp_path
):
    wrong = {"billing": {**dbs.configs["billing"], "password": "wrong-password"}}
    c = in_process(resources=dataclasses.replace(dbs, configs=wrong).resource_configs(tmp_path))
    result = run("--coordinator", c.server.address, "--token", TOKEN, "scan", "billing")
    assert result.exit_code == 6
    assert "the coordinator cannot scan billing" in result.output
    assert "Access denied" in result.output and "unreachable" not in result.output


# -- one vocabulary of states ------------------------------------------------------------------


def in_doubt_three_ways(c, dbs) -> tuple[str, str]:
    """A committing transaction blocked on an unregistered resource, and an orphan."""
    committing = c.begin()
    held = prepare(dbs, "orders", committing, 11)
    ghost = _pb.Branch(resource="ghost", bqual="ghost", dialect="mysql")
    assert c.client.commit(committing, [held.branch(), ghost]).state == COMMITTED
    orphan = new_gtrid(c.server.settings.cluster_id, c.clock() // 1000 - 60)
    prepare(dbs, "billing", orphan, 12)
    c.clock.advance(2_000)  # past the grace: recovery works on the decided one
    report = c.recovery.run_pass()  # first sighting of the orphan: not aborted yet
    assert not report.errors, report.errors  # an unscanned resource would hide the orphan
    return committing, orphan


def test_in_doubt_means_the_same_in_status_list_show_and_json(run, in_process, dbs):
    c = in_process()
    committing, orphan = in_doubt_three_ways(c, dbs)
    admin = ("--coordinator", c.server.address, "--token", TOKEN)

    counts = json.loads(run(*admin, "--json", "status").stdout)["counts"]
    assert counts == {
        "active": 0,
        "orphaned": 1,
        "committing": 1,
        "aborting": 0,
        "in-doubt": 2,
        "blocked": 1,
    }
    status = run(*admin, "status").output
    assert "0 active, 1 orphaned, 1 committing, 0 aborting, 2 in-doubt, 1 blocked" in status

    def listed(state: str) -> dict[str, str]:
        result = run(*admin, "--json", "list", "--state", state)
        assert result.exit_code == 0, result.output
        items = json.loads(result.stdout).get("transactions", [])
        return {t["transaction"]["gtrid"]: t["state"] for t in items}

    # Every word status prints is a state list takes, and they count the same transactions.
    for word, n in counts.items():
        assert len(listed(word)) == n, word
    assert listed("in-doubt") == {committing: "committing", orphan: "orphaned"}
    assert listed("blocked") == {committing: "committing"}

    shown = json.loads(run(*admin, "--json", "show", committing).stdout)
    assert shown["state"] == "committing"
    assert "ghost: blocked: resource ghost is not registered" in shown["blocked"]
    assert json.loads(run(*admin, "--json", "show", orphan).stdout)["state"] == "orphaned"

    c.recovery.run_pass()  # second sighting: the orphan is aborted and rolled back
    assert listed("orphaned") == {}
    assert listed("aborted") == {orphan: "aborted"}


def test_the_readme_defines_the_states_and_exit_codes_as_the_cli_does():
    readme = (Path(__file__).parent.parent / "README.md").read_text()

    def table(first_header: str) -> dict[str, str]:
        start = readme.index(f"| {first_header} |")
        rows = readme[start:].split("\n\n")[0].splitlines()[2:]
        return {
            cells[0].strip("` "): cells[1].strip()
            for cells in (r.strip("|").split("|") for r in rows)
        }

    states = {s.value: s.description for s in TxnState}
    states |= {name: description for name, (description, _) in GROUPS.items()}
    assert table("state") == states
    assert table("exit code") == {str(c.value): c.description for c in ExitCode}
    assert "Exit codes:" in CliRunner().invoke(cli, ["--help"]).output
    state_help = CliRunner().invoke(cli, ["list", "--help"]).output
    assert all(word in state_help for word in states)


def test_gtrids_are_never_cut_in_an_80_column_table(run, in_process, dbs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    c = in_process()
    committing, orphan = in_doubt_three_ways(c, dbs)
    admin = ("--coordinator", c.server.address, "--token", TOKEN)
    commands = (
        (["list", "--state", "in-doubt"], committing),
        (["scan", "billing"], orphan),
        (["show", committing], committing),
    )
    for command, listed in commands:
        output = run(*admin, *command).stdout
        assert max(len(line) for line in output.splitlines()) <= 80, output
        copied = re.findall(r"ts[12]\.[A-Za-z0-9.]+", output)
        assert listed in copied, output
        for gtrid in copied:  # what was copied from the table is what show takes
            assert run(*admin, "show", gtrid).exit_code == 0


def test_the_resolve_actions_table_never_cuts_a_gtrid(run, in_process, dbs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "56")  # a gtrid and little else fits
    c = in_process()
    _, orphan = in_doubt_three_ways(c, dbs)
    admin = ("--coordinator", c.server.address, "--token", TOKEN)
    output = run(*admin, "resolve", orphan, "--abort", "--reason", "stuck").stdout
    copied = re.findall(r"ts[12]\.[A-Za-z0-9.]+", output)
    # The decision line and a row per action, each the whole id.
    assert len(copied) >= 2 and set(copied) == {orphan}, output
