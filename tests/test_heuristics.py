""" "Not found" after a decision is resolved, not assumed.

COMMIT PREPARED / XA COMMIT of a branch that is no longer prepared answer "unknown xid"
whichever way it ended. PostgreSQL can say which: the branch's transaction id (xid8) is
recorded when it prepares, sent with Commit and kept in the log, and pg_xact_status() of it
tells committed from aborted, for the client and for recovery, also after a restart. MariaDB
cannot tell; recovery then notes the branch as unverified instead of claiming success.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from psycopg import sql
from scripted_coordinator import Meanwhile, ScriptedCoordinator
from test_recovery import COMMITTED, Databases, dbs_fixture, in_process_fixture, shop_fixture  # noqa: F401

from twostep.client import (
    Connection,
    HeuristicOutcome,
    get_connection,
    global_transaction,
)
from twostep.client.tpc import Xid, new_gtrid, require_two_phase
from twostep.coordinator._inspect import prepared_xids
from twostep.coordinator._registry import ResourceRegistry
from twostep.v1 import coordinator_pb2 as pb


def rollback_prepared_by_hand(shop: Databases, gtrid: str) -> None:
    with shop.pg.admin_connect(shop.configs["orders"]["database"]) as admin:
        gid = Xid.of(gtrid, "orders").pg_gid()
        admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def test_a_branch_rolled_back_by_hand_after_commit_is_a_heuristic_outcome(shop, in_process):
    coordinator = in_process(recovery_grace_ms=0)
    proxy = ScriptedCoordinator(
        coordinator.server.address, [Meanwhile(lambda g: rollback_prepared_by_hand(shop, g))]
    )
    try:
        with pytest.raises(HeuristicOutcome, match="orders rolled back") as info:
            with global_transaction(coordinator=proxy.address):
                get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
                get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    finally:
        proxy.close()
    gtrid = info.value.gtrid
    assert shop.rows("orders") == set() and shop.rows("billing") == {1}
    # Not acknowledged: recovery looks, and writes the heuristic down (by the xid8 in the log).
    record = coordinator.server.decision_log.get(gtrid)
    assert not record.completed and record.state.value == "committed"
    assert [b.transaction_id > 0 for b in record.branches if b.dialect == "postgresql"] == [True]
    coordinator.recovery.run_pass(eager=True)
    notes = {n.kind: n.text for n in coordinator.server.decision_log.notes(gtrid)}
    assert "orders" in notes["heuristic"] and "found rolled back" in notes["heuristic"]
    # The client committed billing, but told nobody (no Ack): MariaDB cannot tell recovery
    # how a gone branch ended, and the note says so rather than claiming it.
    assert set(notes) <= {"heuristic", "unverified"}
    assert coordinator.server.decision_log.get(gtrid).completed


def prepare_by_hand(shop: Databases, name: str, gtrid: str, row: int) -> pb.Branch:
    connection = Connection.from_config(name, shop.configs[name])
    ops = require_two_phase(connection.dialect.name, connection=name)
    session = connection.connect()
    xid = Xid.of(gtrid, name)
    ops.begin(session, xid, None)
    connection.dialect.run(session, "INSERT INTO t (id) VALUES (?)", (row,))
    txid = ops.prepare(session, xid) or 0
    branch = pb.Branch(
        resource=name,
        bqual=name,
        dialect=connection.dialect.name,
        session_id=ops.session_id(session),
        transaction_id=txid,
    )
    connection.dialect.close(session)  # the client died: the branch waits, detached
    return branch


def test_recovery_after_a_restart_tells_how_gone_branches_ended(shop, in_process):
    first = in_process(recovery_grace_ms=0)
    gtrid = first.begin()
    branches = [prepare_by_hand(shop, n, gtrid, 1) for n in ("orders", "billing")]
    assert first.client.commit(gtrid, branches).state == COMMITTED
    # Before recovery finishes it, one branch is committed and the other rolled back by hand.
    rollback_prepared_by_hand(shop, gtrid)
    with contextlib.closing(shop.maria.admin_connect()) as admin, admin.cursor() as cur:
        cur.execute(f"XA COMMIT {Xid.of(gtrid, 'billing').mysql_literal()}")
    # A restarted coordinator remembers nothing but its log.
    settings = first.server.settings
    first.client.close()
    first.server.stop(1)
    second = in_process(
        data_dir=settings.data_dir, cluster_id=settings.cluster_id, recovery_grace_ms=0
    )
    report = second.recovery.run_pass(eager=True)
    assert not report.in_doubt
    notes = second.server.decision_log.notes(gtrid)
    by_kind = {n.kind: n.text for n in notes}
    assert set(by_kind) == {"heuristic", "unverified"}
    assert "orders" in by_kind["heuristic"] and "rolled back" in by_kind["heuristic"]
    assert "billing" in by_kind["unverified"] and "cannot tell" in by_kind["unverified"]
    assert second.server.decision_log.get(gtrid).completed


def test_a_scan_reports_the_xid8_of_a_branch_prepared_above_the_snapshots_xmax(shop, tmp_path):
    # The snapshot's xmax is the latest completed xid + 1: a transaction still in progress
    # elsewhere keeps it below the xid of a branch prepared meanwhile.
    resource = ResourceRegistry(shop.resource_configs(tmp_path)).get("orders")
    with shop.pg.admin_connect(shop.configs["orders"]["database"]) as busy:
        busy.execute("BEGIN")
        busy.execute("SELECT txid_current()")
        gtrid = new_gtrid("xmax", int(time.time()) + 60)
        branch = prepare_by_hand(shop, "orders", gtrid, 1)
        session = resource.connection.connect()
        try:
            found = {r.xid: r.pg_txid for r in prepared_xids(resource, session)}
        finally:
            resource.connection.dialect.close(session)
        busy.execute("ROLLBACK")
    assert found[Xid.of(gtrid, "orders")] == branch.transaction_id
