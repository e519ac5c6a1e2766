"""A branch that wrote nothing is not prepared (XA's read-only vote), on the real servers.

A prepared read-only MariaDB branch is rolled back by the server when its session closes, and
then looks like a heuristic outcome; and preparing it costs a PREPARE, a COMMIT and a decision
nobody needs. So a branch that wrote nothing is finished with one phase before the others
prepare, and if one writing branch is left, it commits with one phase and no Commit request.
"Wrote nothing" is asked of the server (PostgreSQL: txid_current_if_assigned(); MariaDB: the
session's Handler_write/update/delete counters since XA START), never assumed from the SQL:
a SELECT can call a function that writes, and such a branch must be prepared.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from scripted_coordinator import ScriptedCoordinator
from test_recovery import (  # noqa: F401
    COMMITTED,
    Databases,
    dbs_fixture,
    in_process_fixture,
    shop_fixture,
    wait_until,
)

from twostep.client import (
    ConnectionManager,
    TransactionAborted,
    get_connection,
    global_transaction,
)


@pytest.fixture
def coordinator(in_process):
    return in_process(recovery_grace_ms=0)


@pytest.fixture
def counting(coordinator) -> Iterator[ScriptedCoordinator]:
    """The coordinator behind a proxy that counts Commit requests and changes nothing."""
    proxy = ScriptedCoordinator(coordinator.server.address, [])
    yield proxy
    proxy.close()


def nothing_prepared(shop: Databases) -> bool:
    return not shop.prepared("orders") and not shop.prepared("billing")


def test_a_read_only_mariadb_branch_is_not_prepared_and_the_writer_commits_with_one_phase(
    shop, coordinator, counting
):
    with global_transaction(coordinator=counting.address) as gtx:
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        assert get_connection("billing").execute("SELECT COUNT(*) FROM t") == [(0,)]
    assert counting.commit_calls == 0
    assert shop.rows("orders") == {1}
    assert nothing_prepared(shop)
    # The gtrid was made by the client for the MariaDB xid; the coordinator never heard of it.
    assert coordinator.server.decision_log.get(gtx.gtrid) is None


def test_a_read_only_postgres_branch_is_not_prepared(shop, coordinator, counting):
    with global_transaction(coordinator=counting.address):
        assert get_connection("orders").execute("SELECT COUNT(*) FROM t") == [(0,)]
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    assert counting.commit_calls == 0
    assert shop.rows("billing") == {1}
    assert nothing_prepared(shop)


def test_a_block_that_only_reads_asks_for_no_decision(shop, coordinator, counting):
    with global_transaction(coordinator=counting.address):
        get_connection("billing").execute("SELECT COUNT(*) FROM t")
        get_connection("orders").execute("SELECT COUNT(*) FROM t")
    assert counting.commit_calls == 0
    assert nothing_prepared(shop)


def test_a_reader_among_two_writers_is_left_out_of_the_commit(
    shop, coordinator, counting, pg_config2
):
    ConnectionManager.configure("reports", pg_config2)
    get_connection("reports").execute("CREATE TABLE r (id INT)")
    with global_transaction(coordinator=counting.address) as gtx:
        get_connection("reports").execute("SELECT COUNT(*) FROM r")
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    assert counting.commit_calls == 1
    record = coordinator.server.decision_log.get(gtx.gtrid)
    assert sorted(b.resource for b in record.branches) == ["billing", "orders"]
    assert shop.rows("orders") == shop.rows("billing") == {1}


def test_a_mariadb_select_that_writes_through_a_function_is_prepared_not_committed_early(
    shop, coordinator
):
    get_connection("billing").execute(
        "CREATE FUNCTION put(i INT) RETURNS INT DETERMINISTIC MODIFIES SQL DATA"
        " BEGIN INSERT INTO t (id) VALUES (i); RETURN i; END"
    )
    get_connection("orders").execute(
        "CREATE TABLE d (id INT, ref INT UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )
    address = coordinator.server.address
    with pytest.raises(TransactionAborted, match="orders could not prepare"):
        with global_transaction(coordinator=address):
            get_connection("billing").execute("SELECT put(7)")  # a read, as SQL goes
            # Violates the deferred unique key: PostgreSQL votes NO at PREPARE.
            get_connection("orders").execute("INSERT INTO d VALUES (1, 5), (2, 5)")
    assert shop.rows("billing") == set()  # the function's write went with the rollback
    assert nothing_prepared(shop)


def test_a_postgres_select_that_writes_through_a_function_is_prepared_not_committed_early(
    shop, coordinator, maria
):
    get_connection("orders").execute(
        "CREATE FUNCTION put(i INT) RETURNS INT LANGUAGE sql"
        " AS 'INSERT INTO t (id) VALUES (i) RETURNING id'"
    )
    address = coordinator.server.address
    with pytest.raises(TransactionAborted, match="billing could not prepare"):
        with global_transaction(coordinator=address):
            get_connection("orders").execute("SELECT put(7)")
            get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
            [(session,)] = get_connection("billing").execute("SELECT CONNECTION_ID()")
            # The MariaDB branch's session dies before PREPARE: it votes NO.
            with contextlib.closing(maria.admin_connect()) as admin, admin.cursor() as cur:
                cur.execute(f"KILL CONNECTION {int(session)}")
    assert shop.rows("orders") == set()
    assert nothing_prepared(shop)


_CLIENT = """
import json, sys
from twostep.client import ConnectionManager, get_connection, global_transaction
configs = json.loads(sys.argv[1])
for name, config in configs.items():
    ConnectionManager.configure(name, config)
with global_transaction(coordinator=sys.argv[2], timeout=10) as gtx:
    get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
    get_connection("billing").execute("SELECT COUNT(*) FROM t")
print(gtx.gtrid, flush=True)
"""


def test_a_client_killed_after_the_decision_with_a_read_only_branch_leaves_no_heuristic(
    shop, coordinator
):
    # The input that used to report a heuristic: PostgreSQL INSERT + MariaDB SELECT, client
    # killed at client.after_decision. Now nothing needs a decision: the failpoint is never
    # reached, the client finishes, and nothing is prepared or noted.
    env = {**os.environ, "TWOSTEP_FAILPOINTS": "client.after_decision"}
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT, json.dumps(shop.configs), coordinator.server.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    gtrid = done.stdout.strip()
    assert shop.rows("orders") == {1}
    assert nothing_prepared(shop)
    coordinator.clock.advance(60_000)
    report = coordinator.recovery.run_pass(eager=True)
    assert not report.in_doubt
    assert coordinator.server.decision_log.notes(gtrid) == []


def test_a_locking_read_on_a_read_only_branch_holds_until_the_writer_committed(
    shop, coordinator, maria
):
    # The reader is never prepared, but it is ended only after the writer's commit: its FOR
    # UPDATE lock keeps another transaction out until then. The writer's PREPARE waits in a
    # deferred trigger for an advisory lock the test holds; meanwhile another session tries
    # the locked row (NOWAIT), then lets the writer go on.
    get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    get_connection("orders").execute(
        "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$"
    )
    get_connection("orders").execute(
        "CREATE CONSTRAINT TRIGGER held AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION held()"
    )
    seen: list[str] = []
    database = shop.configs["orders"]["database"]
    holder = shop.pg.admin_connect(database)
    holder.execute("SELECT pg_advisory_lock(4242)")

    def try_the_row_while_the_writer_commits() -> None:
        try:
            wait_until(
                lambda: holder.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone(),
                what="the writer's commit waits in its trigger",
            )
            database = shop.configs["billing"]["database"]
            with contextlib.closing(maria.admin_connect(database)) as conn, conn.cursor() as cur:
                try:
                    cur.execute("SELECT id FROM t WHERE id = 1 FOR UPDATE NOWAIT")
                    seen.append("got the lock")
                except Exception as exc:  # the row is locked
                    seen.append(f"locked: {exc.args[0]}")
                conn.rollback()
        finally:
            holder.execute("SELECT pg_advisory_unlock(4242)")

    other = threading.Thread(target=try_the_row_while_the_writer_commits)
    try:
        with global_transaction(coordinator=coordinator.server.address):
            assert get_connection("billing").execute(
                "SELECT id FROM t WHERE id = 1 FOR UPDATE"
            ) == [(1,)]
            get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
            other.start()
        other.join(30)
    finally:
        holder.close()
    assert seen and seen[0].startswith("locked"), seen
    assert shop.rows("orders") == {1}
    assert nothing_prepared(shop)
