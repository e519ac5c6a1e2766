"""global_transaction() across a real PostgreSQL and a real MariaDB, through a real coordinator.

Every test ends by checking that no twostep xid is left prepared on either server: a
rolled-back transaction that leaves a prepared branch would hold its row locks forever.
"""

from __future__ import annotations

import threading
import time

import pytest

import twostep.client._global as global_module
from twostep.client import (
    ActiveRecord,
    ConnectionManager,
    CoordinatorUnavailable,
    DatabaseError,
    OutcomeUnknown,
    TransactionAborted,
    TwoPhaseNotSupported,
    get_connection,
    global_transaction,
)
from twostep.client.tpc import FORMAT_ID, Xid


class Order(ActiveRecord):
    __connection__ = "orders"


class Invoice(ActiveRecord):
    __connection__ = "billing"


class Note(ActiveRecord):
    __connection__ = "local"


@pytest.fixture
def shop(pg, maria, pg_config, maria_config, tmp_path):
    """'orders' on PostgreSQL, 'billing' on MariaDB, 'local' on SQLite, with one table each."""
    ConnectionManager.configure("orders", pg_config)
    ConnectionManager.configure("billing", maria_config)
    ConnectionManager.configure("local", {"driver": "sqlite", "database": str(tmp_path / "l.db")})
    get_connection("orders").execute(
        "CREATE TABLE orders (id INT PRIMARY KEY, total INT NOT NULL,"
        " ref INT UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )
    get_connection("billing").execute(
        "CREATE TABLE invoices (id INT AUTO_INCREMENT PRIMARY KEY,"
        " order_id INT NOT NULL UNIQUE, amount INT NOT NULL) ENGINE=InnoDB"
    )
    get_connection("local").execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    yield
    ConnectionManager.close_all()
    assert_nothing_prepared(pg, maria, pg_config["database"])


def assert_nothing_prepared(pg, maria, pg_database):
    with pg.admin_connect(pg_database) as conn:
        gids = [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()]
    assert [g for g in gids if Xid.from_pg_gid(g)] == []
    conn = maria.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("XA RECOVER")
            assert [r for r in cur.fetchall() if r[0] == FORMAT_ID] == []
    finally:
        conn.close()


def counts():
    return Order.count(), Invoice.count()


def test_commit_across_postgres_and_mariadb_is_visible_on_both(shop, coordinator):
    with global_transaction(coordinator=coordinator.address, timeout=10) as gtx:
        Order(id=1, total=30).save()
        Invoice(order_id=1, amount=30).save()
    assert gtx.gtrid is not None
    assert Order.where(id=1).first().total == 30
    assert Invoice.where(order_id=1).first().amount == 30
    state = coordinator.get(gtx.gtrid)
    assert state.state_name == "COMMITTED"


def test_exception_in_the_block_commits_neither(shop, coordinator):
    with pytest.raises(RuntimeError, match="boom"):
        with global_transaction(coordinator=coordinator.address):
            Order.create(id=1, total=30)
            Invoice.create(order_id=1, amount=30)
            raise RuntimeError("boom")
    assert counts() == (0, 0)


def test_a_rolled_back_block_is_finished_even_on_databases_the_coordinator_does_not_know(
    shop, coordinator
):
    # The quick start: a coordinator with no resources registered. Recovery cannot look at
    # these databases, so only the client can say that nothing of the transaction is left.
    with pytest.raises(RuntimeError, match="payment declined"):
        with global_transaction(coordinator=coordinator.address) as gtx:
            Order.create(id=2, total=50)
            Invoice.create(order_id=2, amount=50)
            raise RuntimeError("payment declined")
    assert gtx.gtrid is not None
    view = coordinator.wait_for(gtx.gtrid, lambda t: t.completed)
    assert (view.state_name, view.resources) == ("ABORTED", ("orders", "billing"))
    assert counts() == (0, 0)


def test_deferred_constraint_failing_at_postgres_prepare_commits_neither(shop, coordinator):
    Order.create(id=1, total=1, ref=7)
    with pytest.raises(TransactionAborted, match="orders could not prepare") as info:
        with global_transaction(coordinator=coordinator.address):
            Order.create(id=2, total=30, ref=7)  # unique, but only checked at PREPARE
            Invoice.create(order_id=2, amount=30)
    assert info.value.gtrid is not None
    assert counts() == (1, 0)
    # The Abort is sent in the background: the client has already rolled back.
    assert coordinator.wait_for(info.value.gtrid, lambda t: t.state_name == "ABORTED")


def test_mariadb_error_inside_the_block_commits_neither(shop, coordinator):
    Invoice.create(order_id=9, amount=1)
    with pytest.raises(DatabaseError) as info:
        with global_transaction(coordinator=coordinator.address):
            Order.create(id=1, total=30)
            Invoice.create(order_id=9, amount=30)  # duplicate key on MariaDB
    assert info.value.code == "1062"
    assert counts() == (0, 1)


def test_coordinator_stopped_before_commit_rolls_back_both_with_a_typed_error(shop, coordinator):
    with pytest.raises(CoordinatorUnavailable, match="nothing was committed"):
        with global_transaction(coordinator=coordinator.address, timeout=10):
            Order.create(id=1, total=30)
            Invoice.create(order_id=1, amount=30)
            coordinator.stop()
    assert counts() == (0, 0)


def test_unreachable_coordinator_at_the_second_branch_rolls_back_the_first(shop):
    with pytest.raises(CoordinatorUnavailable):
        with global_transaction(coordinator="127.0.0.1:9", timeout=5):
            Order.create(id=1, total=30)
            Invoice.create(order_id=1, amount=30)
    assert counts() == (0, 0)


def test_client_learns_the_decision_after_a_coordinator_restart_and_finishes(
    shop, coordinator_factory
):
    # The coordinator dies right after its COMMIT decision is on disk, before answering.
    coordinator = coordinator_factory(failpoints="coordinator.after_decision_fsync")

    def restart_once_dead():
        coordinator.wait_exit(timeout=30)
        coordinator.restart(failpoints="")

    restarter = threading.Thread(target=restart_once_dead)
    restarter.start()
    with global_transaction(coordinator=coordinator.address, timeout=10) as gtx:
        Order.create(id=1, total=30)
        Invoice.create(order_id=1, amount=30)
    restarter.join()
    assert counts() == (1, 1)
    assert coordinator.get(gtx.gtrid).state_name == "COMMITTED"


def test_a_coordinator_back_on_its_port_after_a_long_outage_is_reached_at_once(shop, coordinator):
    # Ten seconds of failed attempts grow gRPC's default reconnect backoff to ~6.5 s; the
    # client caps it at a second, so the first transaction after the restart goes through.
    coordinator.kill()
    outage_ends = time.monotonic() + 10
    while time.monotonic() < outage_ends:
        with pytest.raises(CoordinatorUnavailable):
            with global_transaction(coordinator=coordinator.address, timeout=1):
                Order.create(id=1, total=30)
                Invoice.create(order_id=1, amount=30)
    coordinator.restart()
    with global_transaction(coordinator=coordinator.address, timeout=3):
        Order.create(id=2, total=30)
        Invoice.create(order_id=2, amount=30)
    assert counts() == (1, 1)  # the outage's attempts rolled back


def test_lost_commit_reply_raises_outcome_unknown_and_leaves_branches_prepared(
    shop, coordinator_factory, monkeypatch, pg, maria, pg_config
):
    monkeypatch.setattr(global_module, "_OUTCOME_PATIENCE", 1.0)
    coordinator = coordinator_factory(failpoints="coordinator.after_decision_fsync")
    with pytest.raises(OutcomeUnknown) as info:
        with global_transaction(coordinator=coordinator.address, timeout=2):
            Order.create(id=1, total=30)
            Invoice.create(order_id=1, amount=30)
    gtrid = info.value.gtrid
    # Not rolled back: the COMMIT decision is on disk, and the branches wait for it.
    with pg.admin_connect(pg_config["database"]) as conn:
        gids = [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()]
    assert Xid.of(gtrid, "orders").pg_gid() in gids
    # The MariaDB branch's bqual also names the session that held it.
    [billing] = [x for x in _maria_prepared(maria) if (x.gtrid, x.resource) == (gtrid, "billing")]
    coordinator.restart(failpoints="")
    assert coordinator.get(gtrid).state_name == "COMMITTED"
    # Until recovery lands, finish them as the coordinator will: by the logged decision.
    from twostep.client.tpc import require_two_phase

    for name, xid in (("orders", Xid.of(gtrid, "orders")), ("billing", billing)):
        conn = get_connection(name)
        session = conn.acquire()
        ops = require_two_phase(conn.dialect.name, connection=name)
        ops.commit_prepared(session, xid)
        conn.release(session)
    assert counts() == (1, 1)


def _maria_prepared(maria):
    conn = maria.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("XA RECOVER")
            return [Xid.from_mysql_recover(*r) for r in cur.fetchall()]
    finally:
        conn.close()


def test_one_postgres_database_block_needs_no_coordinator(shop):
    with global_transaction(coordinator="127.0.0.1:9") as gtx:
        Order.create(id=1, total=30)
        Order.create(id=2, total=40)
    assert gtx.gtrid is None
    assert Order.count() == 2


def test_one_mariadb_block_commits_with_one_phase_and_no_commit_request(shop, coordinator):
    with global_transaction(coordinator=coordinator.address) as gtx:
        Invoice.create(order_id=1, amount=30)
    assert Invoice.count() == 1
    # The client made the gtrid for XA START itself; the coordinator never heard of it.
    assert gtx.gtrid.startswith("ts2.")
    assert coordinator.get(gtx.gtrid) is None


def test_sqlite_model_inside_the_block_is_refused_by_name_and_not_written(shop, coordinator):
    with pytest.raises(TwoPhaseNotSupported, match=r"Note.*'local'"):
        with global_transaction(coordinator=coordinator.address):
            Order.create(id=1, total=30)
            Note.create(id=1, body="never")
    assert Order.count() == 0
    assert Note.count() == 0


def test_raw_execute_inside_the_block_runs_on_the_branch(shop, coordinator):
    with pytest.raises(RuntimeError), global_transaction(coordinator=coordinator.address):
        get_connection("orders").execute("INSERT INTO orders (id, total) VALUES (?, ?)", (1, 5))
        get_connection("billing").execute(
            "INSERT INTO invoices (order_id, amount) VALUES (?, ?)", (1, 5)
        )
        raise RuntimeError("abort")
    assert counts() == (0, 0)


def test_nested_blocks_join_the_outer_transaction(shop, coordinator):
    with global_transaction(coordinator=coordinator.address) as outer:
        Order.create(id=1, total=30)
        with global_transaction(coordinator="127.0.0.1:9") as inner:
            Invoice.create(order_id=1, amount=30)
        assert inner is outer
    assert counts() == (1, 1)


def test_an_exception_caught_between_nested_blocks_still_aborts_the_outer(shop, coordinator):
    with pytest.raises(TransactionAborted, match="inner block raised"):
        with global_transaction(coordinator=coordinator.address):
            Order.create(id=1, total=30)
            try:
                with global_transaction():
                    Invoice.create(order_id=1, amount=30)
                    raise KeyError("inner")
            except KeyError:
                pass
    assert counts() == (0, 0)


def test_each_branch_lock_wait_is_bounded_by_the_deadline(shop, coordinator):
    with global_transaction(coordinator=coordinator.address, timeout=3):
        [(pg_timeout,)] = get_connection("orders").execute("SHOW lock_timeout")
        [(my_timeout,)] = get_connection("billing").execute(
            "SELECT @@SESSION.innodb_lock_wait_timeout"
        )
    assert pg_timeout.endswith("ms") and 0 < int(pg_timeout[:-2]) <= 3000
    assert 1 <= int(my_timeout) <= 3


def test_deadline_passed_before_commit_aborts_both(shop, coordinator):
    with pytest.raises(TransactionAborted, match="deadline"):
        with global_transaction(coordinator=coordinator.address, timeout=0.5):
            Order.create(id=1, total=30)
            Invoice.create(order_id=1, amount=30)
            threading.Event().wait(0.7)
    assert counts() == (0, 0)


def test_a_database_down_at_the_first_statement_raises_its_own_error(shop):
    ConnectionManager.configure(
        "down",
        {
            "driver": "postgresql",
            "host": "127.0.0.1",
            "port": 9,
            "database": "x",
            "username": "x",
            "connect_timeout": 2,
        },
    )
    with pytest.raises(DatabaseError):
        with global_transaction(coordinator="127.0.0.1:9"):
            get_connection("down").execute("SELECT 1")
