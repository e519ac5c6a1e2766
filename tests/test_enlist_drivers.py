"""`gtx.enlist()`: the application's own psycopg and PyMySQL connections as branches of a
global transaction, against a real PostgreSQL and a real MariaDB and a real coordinator.

Every test ends by checking that no twostep xid is left prepared on either server.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pymysql
import pytest
from test_global_transaction import assert_nothing_prepared

from twostep.client import (
    ConnectionManager,
    InvalidIdentifier,
    TransactionAborted,
    TwoPhaseNotSupported,
    TwostepError,
    get_connection,
    global_transaction,
)


def pg_connect(config, **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host=config["host"],
        port=config["port"],
        dbname=config["database"],
        user=config["username"],
        password=config.get("password") or None,
        **kwargs,
    )


def maria_connect(config) -> pymysql.Connection:
    return pymysql.connect(  # PyMySQL's defaults: autocommit off
        host=config["host"],
        port=config["port"],
        database=config["database"],
        user=config["username"],
        password=config.get("password") or "",
    )


@pytest.fixture
def conns(pg, maria, pg_config, maria_config):
    """(psycopg connection, PyMySQL connection) of the application, each with one table."""
    pgc = pg_connect(pg_config)
    myc = maria_connect(maria_config)
    pgc.execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT NOT NULL)")
    pgc.commit()
    with myc.cursor() as cur:
        cur.execute("CREATE TABLE invoices (order_id INT PRIMARY KEY, amount INT) ENGINE=InnoDB")
    myc.commit()
    yield pgc, myc
    pgc.close()
    myc.close()
    assert_nothing_prepared(pg, maria, pg_config["database"])


def insert(pgc, myc, order_id: int, amount: int) -> None:
    pgc.execute("INSERT INTO orders VALUES (%s, %s)", (order_id, amount))
    with myc.cursor() as cur:
        cur.execute("INSERT INTO invoices VALUES (%s, %s)", (order_id, amount))


def rows(pg_config, maria_config) -> tuple[list, list]:
    """What other sessions see on each database."""
    with pg_connect(pg_config, autocommit=True) as conn:
        orders = conn.execute("SELECT id, total FROM orders ORDER BY id").fetchall()
    conn = maria_connect(maria_config)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT order_id, amount FROM invoices ORDER BY order_id")
            invoices = [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
    return orders, invoices


def test_enlisted_psycopg_and_pymysql_connections_commit_together(
    conns, pg_config, maria_config, coordinator
):
    pgc, myc = conns
    with global_transaction(coordinator=coordinator.address, timeout=10) as gtx:
        gtx.enlist(pgc, resource="orders")
        gtx.enlist(myc, resource="billing")
        insert(pgc, myc, 1, 30)
    assert rows(pg_config, maria_config) == ([(1, 30)], [(1, 30)])
    view = coordinator.get(gtx.gtrid)
    assert (view.state_name, view.resources) == ("COMMITTED", ("orders", "billing"))


def test_an_exception_in_the_block_rolls_back_both_enlisted_connections(
    conns, pg_config, maria_config, coordinator
):
    pgc, myc = conns
    with pytest.raises(RuntimeError, match="declined"):
        with global_transaction(coordinator=coordinator.address) as gtx:
            gtx.enlist(pgc, resource="orders")
            gtx.enlist(myc, resource="billing")
            insert(pgc, myc, 1, 30)
            raise RuntimeError("declined")
    assert rows(pg_config, maria_config) == ([], [])


def test_commit_and_rollback_of_an_enlisted_connection_inside_the_block_are_refused(
    conns, pg_config, maria_config, coordinator
):
    """The connection's own commit() would commit its branch alone: psycopg refuses it inside
    the transaction block the branch holds, MariaDB inside an XA branch (1399). The branch is
    unchanged and commits with the other one when the block ends."""
    pgc, myc = conns
    with global_transaction(coordinator=coordinator.address, timeout=10) as gtx:
        gtx.enlist(pgc, resource="orders")
        gtx.enlist(myc, resource="billing")
        insert(pgc, myc, 1, 30)
        with pytest.raises(psycopg.ProgrammingError, match="commit"):
            pgc.commit()
        with pytest.raises(psycopg.ProgrammingError, match="rollback"):
            pgc.rollback()
        with pytest.raises(pymysql.err.OperationalError) as refused:
            myc.commit()
        assert refused.value.args[0] == 1399
        with pytest.raises(pymysql.err.OperationalError):
            myc.rollback()
        assert rows(pg_config, maria_config) == ([], [])  # nothing committed on its own
        insert(pgc, myc, 2, 40)
    assert rows(pg_config, maria_config) == ([(1, 30), (2, 40)], [(1, 30), (2, 40)])


def test_a_failed_statement_on_an_enlisted_postgres_connection_rolls_back_both(
    conns, pg_config, maria_config, coordinator
):
    pgc, myc = conns
    with pytest.raises(TransactionAborted, match="orders could not prepare"):
        with global_transaction(coordinator=coordinator.address) as gtx:
            gtx.enlist(pgc, resource="orders")
            gtx.enlist(myc, resource="billing")
            insert(pgc, myc, 1, 30)
            with pytest.raises(psycopg.errors.UniqueViolation):
                pgc.execute("INSERT INTO orders VALUES (1, 1)")  # caught, yet the branch failed
    assert rows(pg_config, maria_config) == ([], [])


def test_enlisted_connections_are_given_back_as_they_were_found(conns, coordinator):
    """Autocommit (off, the drivers' default) and MariaDB's lock wait timeout are the
    session's own again after the block; inside it, lock waits are bounded by the deadline."""
    pgc, myc = conns
    with myc.cursor() as cur:
        cur.execute("SELECT @@session.innodb_lock_wait_timeout, @@session.wait_timeout")
        maria_before = cur.fetchone()
    myc.commit()
    with global_transaction(coordinator=coordinator.address, timeout=7) as gtx:
        gtx.enlist(pgc, resource="orders")
        gtx.enlist(myc, resource="billing")
        (lock_timeout,) = pgc.execute("SHOW lock_timeout").fetchone()
        with myc.cursor() as cur:
            cur.execute("SELECT @@session.innodb_lock_wait_timeout")
            (maria_lock_wait,) = cur.fetchone()
        insert(pgc, myc, 1, 30)
    assert lock_timeout.endswith("ms") and 0 < int(lock_timeout[:-2]) <= 7000
    assert 0 < maria_lock_wait <= 7
    assert pgc.autocommit is False and myc.get_autocommit() is False
    assert pgc.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with myc.cursor() as cur:
        cur.execute("SELECT @@session.innodb_lock_wait_timeout, @@session.wait_timeout")
        assert cur.fetchone() == maria_before
    myc.commit()
    pgc.execute("INSERT INTO orders VALUES (2, 2)")  # an ordinary transaction again
    pgc.commit()


def test_one_enlisted_writer_commits_alone_with_one_phase(
    conns, pg_config, maria_config, coordinator
):
    pgc, myc = conns
    with global_transaction(coordinator=coordinator.address) as gtx:
        gtx.enlist(pgc, resource="orders")
        gtx.enlist(myc, resource="billing")
        pgc.execute("INSERT INTO orders VALUES (1, 30)")
        with myc.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM invoices")  # a reader: never prepared
    assert rows(pg_config, maria_config) == ([(1, 30)], [])
    assert coordinator.get(gtx.gtrid) is None  # one writer: the coordinator never heard of it


def test_a_connection_with_a_transaction_open_is_refused_and_left_alone(conns, coordinator):
    pgc, myc = conns
    pgc.execute("INSERT INTO orders VALUES (9, 9)")  # autocommit off: a transaction is open
    with pytest.raises(TwostepError, match="'orders' is in a transaction"):
        with global_transaction(coordinator=coordinator.address) as gtx:
            gtx.enlist(pgc, resource="orders")
    pgc.commit()  # still the application's own transaction
    with myc.cursor() as cur:
        cur.execute("INSERT INTO invoices VALUES (9, 9)")  # autocommit off: a transaction
    with pytest.raises(TwostepError, match="'billing' is in a transaction"):
        with global_transaction(coordinator=coordinator.address) as gtx:
            gtx.enlist(myc, resource="billing")
    myc.commit()
    assert pgc.execute("SELECT id FROM orders").fetchall() == [(9,)]


def test_one_resource_takes_one_session_per_transaction(conns, pg_config, coordinator):
    pgc, _ = conns
    ConnectionManager.configure("orders", pg_config)
    try:
        with pytest.raises(TwostepError, match="'orders' already has a branch"):
            with global_transaction(coordinator=coordinator.address) as gtx:
                gtx.enlist(pgc, resource="orders")
                get_connection("orders").execute("SELECT 1")
        with pytest.raises(TwostepError, match="'orders' already has a branch"):
            with global_transaction(coordinator=coordinator.address) as gtx:
                get_connection("orders").execute("SELECT 1")
                gtx.enlist(pgc, resource="orders")
    finally:
        ConnectionManager.close_all()
    assert pgc.autocommit is False and pgc.info.transaction_status.name == "IDLE"


def test_sqlite_other_objects_and_bad_resource_names_are_refused(tmp_path, coordinator):
    lite = sqlite3.connect(tmp_path / "x.db")
    with global_transaction(coordinator=coordinator.address) as gtx:
        with pytest.raises(TwoPhaseNotSupported, match=r"'notes'.*sqlite"):
            gtx.enlist(lite, resource="notes")
        with pytest.raises(TypeError, match=r"psycopg.*PyMySQL.*not str"):
            gtx.enlist("postgresql://localhost/x", resource="orders")
        with pytest.raises(InvalidIdentifier, match="resource name"):
            gtx.enlist(lite, resource="no spaces")
    lite.close()
