"""The Admin service: token, Status, ShowTransaction, ScanResource, Recover, Resolve; secrets.

In-process coordinators with a fake clock (recovery passes run by the test) against the real
throwaway databases, and coordinator processes where the start line, the token file or the
process's log output is what is checked. Helpers come from test_recovery.py.
"""

from __future__ import annotations

import os
import stat
import time

import grpc
import pytest
from test_recovery import (
    ABORTED,
    COMMITTED,
    TOKEN,
    Client,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    in_process_fixture,  # noqa: F401 - the fixture "in_process"
    new_cluster,
    prepare,
    start_process,
    wait_until,
)

from twostep.client.tpc import new_gtrid
from twostep.coordinator import ConfigError, load_settings
from twostep.coordinator._registry import ResourceRegistry
from twostep.coordinator.recovery import RECOVERY_ABORT_REASON
from twostep.v1 import admin_pb2 as apb
from twostep.v1 import coordinator_pb2 as pb

UNSPECIFIED = pb.TRANSACTION_STATE_UNSPECIFIED


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def abort_item(gtrid: str, branches: list[pb.Branch]) -> pb.AbortRequest:
    item = pb.AbortItem(gtrid=gtrid, reason="the block raised", branches=branches)
    return pb.AbortRequest(transactions=[item])


# -- the token ---------------------------------------------------------------------------------

CALLS = [
    ("Status", apb.StatusRequest()),
    ("ListTransactions", apb.AdminListRequest(state="in-doubt")),
    ("ShowTransaction", apb.ShowTransactionRequest(gtrid="x")),
    ("ScanResource", apb.ScanResourceRequest(resource="orders")),
    ("Recover", apb.RecoverRequest(dry_run=True)),
    ("Resolve", apb.ResolveRequest(gtrid="x", commit=True, reason="r", force=True)),
]


@pytest.mark.parametrize("name, request_", CALLS, ids=[c[0] for c in CALLS])
def test_every_admin_call_needs_the_admin_token(in_process, name, request_):
    c = in_process()
    call = getattr(c.client.admin, name)
    for metadata in (
        (),
        (("authorization", "Bearer wrong-token-of-some-length"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", f"Bearer {TOKEN}x"),),
    ):
        error = rpc_error(call, request_, metadata=metadata, timeout=10)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert TOKEN not in error.details()
    try:
        call(request_, metadata=c.client.auth, timeout=10)
    except grpc.RpcError as exc:  # the made-up gtrid "x" is refused, but after the token
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.details().startswith("gtrid: ")
    # The Coordinator service itself needs no token.
    assert c.client.begin(1000).startswith("ts1.")


def test_a_token_is_generated_into_the_data_dir_at_first_start(coordinator_factory, tmp_path):
    proc = coordinator_factory(tmp_path / "data")  # no token configured
    path = (tmp_path / "data" / "admin-token").resolve()
    assert f"admin_token_file={path}" in proc.start_line
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32 and token not in proc.output
    client = Client(proc.address, token=token)
    assert client.status().cluster_id == proc.cluster_id
    proc.restart()  # the same token again, not a new one
    assert path.read_text().strip() == token
    assert client.status().cluster_id == proc.cluster_id
    assert rpc_error(Client(proc.address, "x" * 20).status).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    client.close()


def test_a_configured_token_wins_and_a_bad_token_file_is_a_settings_error(
    coordinator_factory, tmp_path
):
    proc = coordinator_factory(tmp_path / "a", env={"TWOSTEP_ADMIN_TOKEN": TOKEN})
    assert "admin_token=configured" in proc.start_line and TOKEN not in proc.output
    assert not (tmp_path / "a" / "admin-token").exists()
    assert Client(proc.address).status().cluster_id == proc.cluster_id

    short = tmp_path / "short-token"
    short.write_text("tooshort\n")
    bad = coordinator_factory(tmp_path / "b", start=False, args=["--admin-token-file", str(short)])
    with pytest.raises(RuntimeError, match="exited with 2"):
        bad.start()
    assert "at least 16 printable characters" in bad.output and "tooshort" not in bad.output
    with pytest.raises(ConfigError, match="admin token") as info:
        load_settings([], {"TWOSTEP_ADMIN_TOKEN": "secret but short"})
    assert "secret but short" not in str(info.value)


# -- Status, ShowTransaction, ScanResource -----------------------------------------------------


def test_status_counts_transactions_and_shows_resources_without_credentials(in_process, dbs):
    c = in_process()
    c.begin()
    committed = c.begin()
    held = prepare(dbs, "orders", committed, 1)
    assert c.client.commit(committed, [held.branch()]).state == COMMITTED
    status = c.client.status()
    # Committing is in doubt (a branch is prepared until phase 2), not blocked.
    assert (status.active, status.committed_incomplete, status.in_doubt) == (1, 1, 1)
    assert status.blocked == 0
    assert status.cluster_id == c.server.settings.cluster_id
    resources = {r.name: r for r in status.resources}
    assert resources["orders"].target == (
        f"127.0.0.1:{dbs.configs['orders']['port']}/{dbs.configs['orders']['database']}"
    )
    assert resources["billing"].error == "not scanned yet"

    c.clock.advance(2_000)
    c.recovery.run_pass()
    status = c.client.status()
    assert status.committed_incomplete == 0
    assert all(r.reachable and not r.error for r in status.resources)
    assert status.recovery_counters["committed"] == 1
    assert status.recovery_counters["passes"] == 1
    assert [a.action for a in status.last_recovery.actions] == ["commit", "complete"]


def test_show_transaction_knows_an_orphan_the_log_never_heard_of(in_process, dbs):
    c = in_process()
    gtrid = new_gtrid(c.server.settings.cluster_id, int(time.time()) + 3600)
    prepare(dbs, "billing", gtrid, 2)
    detail = c.client.show(gtrid)
    assert detail.transaction.state == UNSPECIFIED
    assert [(b.branch.resource, b.on_database) for b in detail.branches] == [
        ("billing", "prepared")
    ]
    error = rpc_error(c.client.show, new_gtrid(c.server.settings.cluster_id, 1))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = rpc_error(c.client.show, new_gtrid("elsewhere", 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("gtrid: belongs to coordinator cluster 'elsewhere'")


def test_scan_resource_lists_every_prepared_xid_beside_the_log(in_process, dbs):
    c = in_process()
    ours = c.begin()
    prepare(dbs, "orders", ours, 1)
    theirs = prepare(dbs, "orders", new_gtrid("elsewhere", 1), 2)
    with dbs.pg.admin_connect(dbs.configs["orders"]["database"]) as conn:
        conn.execute("BEGIN")
        conn.execute("PREPARE TRANSACTION 'somebody-else'")
    scan = c.client.admin.ScanResource(
        apb.ScanResourceRequest(resource="orders"), metadata=c.client.auth, timeout=10
    )
    by_owner = {x.owner: x for x in scan.xids}
    assert sorted(by_owner) == ["foreign", "other cluster", "ours"]
    assert by_owner["ours"].gtrid == ours and by_owner["ours"].bqual == "orders"
    assert by_owner["ours"].logged_state == pb.TRANSACTION_STATE_ACTIVE
    assert by_owner["other cluster"].gtrid == theirs.xid.gtrid
    assert by_owner["foreign"].raw == "somebody-else" and not by_owner["foreign"].gtrid
    # Nothing was touched.
    assert {ours, theirs.xid.gtrid} <= {x.gtrid for x in dbs.prepared("orders")}

    for name, code in (("nope", grpc.StatusCode.NOT_FOUND), ("-bad", "INVALID_ARGUMENT")):
        error = rpc_error(
            c.client.admin.ScanResource,
            apb.ScanResourceRequest(resource=name),
            metadata=c.client.auth,
            timeout=10,
        )
        assert error.code() == (code if not isinstance(code, str) else grpc.StatusCode[code])
    assert (
        "registered: billing, orders"
        in rpc_error(
            c.client.admin.ScanResource,
            apb.ScanResourceRequest(resource="nope"),
            metadata=c.client.auth,
            timeout=10,
        ).details()
    )


# -- Recover -----------------------------------------------------------------------------------


def test_a_dry_run_plans_and_changes_nothing(in_process, dbs):
    c = in_process()
    orphan = c.begin(timeout_ms=1000)
    orphaned = [prepare(dbs, "orders", orphan, 1), prepare(dbs, "billing", orphan, 1)]
    decided = c.begin()
    held = [prepare(dbs, "orders", decided, 2), prepare(dbs, "billing", decided, 2)]
    assert c.client.commit(decided, [h.branch() for h in held]).state == COMMITTED
    c.recovery.run_pass()  # first sighting of the orphan; the decision is within its grace
    c.clock.advance(3_000)  # past the orphan's deadline and the grace

    report = c.client.recover(dry_run=True)
    assert report.dry_run
    planned = sorted((a.gtrid == orphan, a.resource, a.action, a.result) for a in report.actions)
    assert planned == [
        (False, "", "complete", "planned"),
        (False, "billing", "commit", "planned"),
        (False, "orders", "commit", "planned"),
        (True, "", "complete", "planned"),
        (True, "", "decide-abort", "planned"),
        (True, "billing", "rollback", "planned"),
        (True, "orders", "rollback", "planned"),
    ]
    again = c.client.recover(dry_run=True)  # the dry run did not count as a scan
    assert sorted(a.action for a in again.actions) == sorted(a.action for a in report.actions)
    # Nothing changed: branches prepared, no decision for the orphan, nothing completed.
    for h in orphaned + held:
        assert h.xid in dbs.prepared(h.connection.name)
    assert dbs.rows("orders") == dbs.rows("billing") == set()
    assert c.server.decision_log.get(orphan).state.value == "active"
    assert not c.client.get(decided).completed
    assert c.client.status().last_recovery.dry_run is False  # Status keeps real passes

    report = c.client.recover()
    assert {(a.action, a.result) for a in report.actions} >= {
        ("decide-abort", "done"),
        ("rollback", "done"),
        ("commit", "done"),
        ("complete", "done"),
    }
    assert dbs.rows("orders") == dbs.rows("billing") == {2}
    t = c.client.get(orphan)
    assert (t.state, t.reason, t.completed) == (ABORTED, RECOVERY_ABORT_REASON, True)


# -- Resolve -----------------------------------------------------------------------------------


def resolve(client: Client, gtrid: str, *, commit: bool, reason: str, force: bool = False):
    request = apb.ResolveRequest(gtrid=gtrid, commit=commit, reason=reason, force=force)
    return client.admin.Resolve(request, metadata=client.auth, timeout=30)


def test_resolve_needs_a_reason_and_records_the_refusal(in_process, dbs):
    c = in_process()
    gtrid = c.begin()
    for reason in ("", "   "):
        error = rpc_error(resolve, c.client, gtrid, commit=False, reason=reason)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("reason: required")
    error = rpc_error(resolve, c.client, gtrid, commit=False, reason="x" * 1001)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(resolve, c.client, "ts1.nope", commit=False, reason="why")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("gtrid: ")
    notes = [n.text for n in c.server.decision_log.notes(gtrid)]
    assert len(notes) == 3 and all("refused: reason" in n for n in notes)
    assert c.server.decision_log.get(gtrid).state.value == "active"  # nothing decided


def test_resolve_refuses_to_contradict_a_decision_unless_forced(in_process, dbs):
    c = in_process()
    gtrid = c.begin()
    held = [prepare(dbs, "orders", gtrid, 3), prepare(dbs, "billing", gtrid, 3)]
    reply = c.client.stub.Abort(abort_item(gtrid, [h.branch() for h in held]), timeout=10)
    assert reply.decisions[0].state == ABORTED  # and the client died before rolling back

    error = rpc_error(resolve, c.client, gtrid, commit=True, reason="the money left already")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ABORTED" in error.details() and "needs force" in error.details()
    for h in held:  # refused: nothing touched
        assert h.xid in dbs.prepared(h.connection.name)

    reply = resolve(c.client, gtrid, commit=True, reason="the money left already", force=True)
    assert reply.decision.state == COMMITTED
    assert reply.decision.reason == "resolved by operator: the money left already"
    assert {(a.resource, a.action, a.result) for a in reply.actions} == {
        ("orders", "commit", "done"),
        ("billing", "commit", "done"),
        ("", "complete", "done"),
    }
    assert dbs.rows("orders") == dbs.rows("billing") == {3}
    detail = c.client.show(gtrid)
    assert detail.transaction.state == COMMITTED and detail.transaction.completed
    audit = [n for n in detail.notes if " resolve: " in n]
    assert len(audit) == 2
    assert "resolve commit by ipv" in audit[0] and "refused: the logged decision" in audit[0]
    assert "resolve commit (force)" in audit[1] and "accepted; was aborted" in audit[1]
    assert "reason: the money left already" in audit[1]

    # Asking for what is already decided is accepted and changes nothing.
    assert resolve(c.client, gtrid, commit=True, reason="again").decision.state == COMMITTED


def test_resolve_refusing_to_abort_a_committed_transaction_says_its_client_committed_it(
    in_process, dbs
):
    c = in_process()
    gtrid = c.begin()
    held = [prepare(dbs, "orders", gtrid, 6), prepare(dbs, "billing", gtrid, 6)]
    assert c.client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    error = rpc_error(resolve, c.client, gtrid, commit=False, reason="undo it")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "the logged decision is COMMITTED (by its client's Commit): contradicting it needs force"
    )


def test_resolve_aborts_an_orphan_but_commits_one_only_with_force(in_process, dbs):
    c = in_process()
    gtrid = c.begin()  # active, before its deadline: its client may still be working
    held = [prepare(dbs, "orders", gtrid, 4), prepare(dbs, "billing", gtrid, 4)]
    error = rpc_error(resolve, c.client, gtrid, commit=True, reason="looks fine")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no decision is logged" in error.details()

    reply = resolve(c.client, gtrid, commit=False, reason="stuck since the deploy")
    assert reply.decision.state == ABORTED
    assert {(a.resource, a.action, a.result) for a in reply.actions} >= {
        ("orders", "rollback", "done"),
        ("billing", "rollback", "done"),
    }
    for h in held:
        assert h.xid not in dbs.prepared(h.connection.name)
    t = c.client.get(gtrid)
    assert sorted(b.resource for b in t.branches) == ["billing", "orders"]  # as found
    assert c.client.commit(gtrid, [h.branch() for h in held]).state == ABORTED  # a late Commit

    # A gtrid the log never heard of: presumed abort, so committing it needs force.
    unknown = new_gtrid(c.server.settings.cluster_id, int(time.time()) + 60)
    prepare(dbs, "orders", unknown, 5)
    error = rpc_error(resolve, c.client, unknown, commit=True, reason="I know better")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    reply = resolve(c.client, unknown, commit=True, reason="I know better", force=True)
    assert reply.decision.state == COMMITTED and dbs.rows("orders") == {5}


@pytest.mark.parametrize("commit", [False, True])
def test_resolve_of_a_gtrid_that_is_nowhere_is_not_found_and_records_nothing(
    in_process, dbs, commit
):
    # A mistyped id: not in the log, no branch prepared anywhere. "Done" would be a lie.
    c = in_process()
    typo = new_gtrid(c.server.settings.cluster_id, int(time.time()) + 60)
    error = rpc_error(resolve, c.client, typo, commit=commit, reason="stuck since the deploy")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no transaction" in error.details() and "check the id" in error.details()
    assert c.server.decision_log.get(typo) is None
    assert c.server.decision_log.notes(typo) == []
    # Forced, the operator's decision is recorded all the same.
    reply = resolve(c.client, typo, commit=False, reason="on purpose", force=True)
    assert reply.decision.state == ABORTED


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_never_show_in_status_errors_reprs_or_logs(coordinator_factory, tmp_path, dbs):
    file_secret = "file-secret-" + os.urandom(6).hex()
    env_secret = "env-secret-" + os.urandom(6).hex()
    (tmp_path / "orders.pw").write_text(file_secret + "\n")
    orders = dict(dbs.configs["orders"])
    billing = dict(dbs.configs["billing"])
    del orders["password"], billing["password"]
    orders["password_file"] = "orders.pw"  # relative to the config file; PG trusts anyone
    billing["password_env"] = "BILLING_DB_PASSWORD"  # wrong for MariaDB: access denied
    dbs.configs = {"orders": orders, "billing": billing}
    env = {"BILLING_DB_PASSWORD": env_secret}
    proc = start_process(coordinator_factory, tmp_path, dbs, new_cluster(), env=env)
    client = Client(proc.address)

    def scanned() -> dict[str, apb.ResourceStatus]:
        resources = {r.name: r for r in client.status().resources}
        return resources if all("not scanned" not in r.error for r in resources.values()) else {}

    resources = wait_until(scanned, what="a scan")
    assert not resources["billing"].reachable and "Access denied" in resources["billing"].error
    assert resources["orders"].reachable
    status = client.status()
    error = rpc_error(
        client.admin.ScanResource,
        apb.ScanResourceRequest(resource="billing"),
        metadata=client.auth,
        timeout=10,
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "Access denied" in error.details()
    report = client.recover()
    assert report.errors and "Access denied" in report.errors[0]

    config = next(tmp_path.glob("coordinator-*.toml"))
    settings = load_settings(["--config", str(config)], env)
    broken = tmp_path / "broken.toml"
    broken.write_text(
        f'[resources.billing]\ndriver = "mysql"\nhost = "h"\ndatabase = "d"\nusername = "u"\n'
        f'port = "not a port"\npassword = "{env_secret}"\n'
    )
    with pytest.raises(ConfigError) as config_error:
        load_settings(["--config", str(broken)], env)

    shown = "\n".join(
        [
            status.SerializeToString().decode(errors="replace"),
            str(status),
            error.details(),
            str(report),
            proc.output,
            repr(settings),
            repr(settings.resources),
            repr(ResourceRegistry(settings.resources)),
            repr(list(ResourceRegistry(settings.resources))),
            str(config_error.value),
        ]
    )
    assert "field 'port'" in shown and "Access denied" in proc.wait_for_output("Access denied")
    for secret in (file_secret, env_secret, TOKEN):
        assert secret not in shown
    client.close()


def test_resource_tables_are_checked_when_the_settings_are_read(tmp_path):
    config = tmp_path / "c.toml"
    for table, message in (
        ('driver = "sqlite"\ndatabase = "x"', "field 'driver' must be one of"),
        ('driver = "mysql"\nhost = "h"\ndatabase = "d"\nusername = "u"\ndsn = "x"', "dsn"),
        ('driver = "mysql"\nhost = "h"\ndatabase = "d"', "missing field 'username'"),
        (
            'driver = "mysql"\nhost = "h"\ndatabase = "d"\nusername = "u"\n'
            'password = "p"\npassword_env = "E"',
            "at most one of",
        ),
        (
            'driver = "mysql"\nhost = "h"\ndatabase = "d"\nusername = "u"\npassword_env = "NOPE"',
            "'NOPE', which is not set",
        ),
        (
            'driver = "mysql"\nhost = "h"\ndatabase = "d"\nusername = "u"\n'
            'password_file = "missing.pw"',
            "cannot read password_file",
        ),
    ):
        config.write_text(f"[resources.billing]\n{table}\n")
        with pytest.raises(ConfigError, match=message):
            load_settings(["--config", str(config)], {})
    config.write_text('[resources."bad name"]\ndriver = "mysql"\n')
    with pytest.raises(ConfigError, match="resource name"):
        load_settings(["--config", str(config)], {})
    (tmp_path / "pw").write_text("s3cret\n")
    config.write_text(
        '[resources.billing]\ndriver = "mariadb"\nhost = "h"\nport = 3307\ndatabase = "d"\n'
        'username = "u"\npassword_file = "pw"\n'
    )
    (resource,) = load_settings(["--config", str(config)], {}).resources
    assert (resource.name, resource.dialect, resource.target) == ("billing", "mysql", "h:3307/d")
    assert resource.connection_config["password"] == "s3cret"
    assert "s3cret" not in repr(resource)
