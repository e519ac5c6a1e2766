"""Transaction(conn): a transaction on one connection with the manual two-phase API."""

from __future__ import annotations

import contextvars

import pytest

from twostep.client import (
    ConnectionManager,
    Transaction,
    TwoPhaseNotSupported,
    TwostepError,
    get_connection,
)
from twostep.client.tpc import FORMAT_ID, LOCAL_CLUSTER, Xid

DIALECTS = ["postgresql", "mysql", "sqlite"]


@pytest.fixture(params=DIALECTS)
def db(request, tmp_path):
    """A connection named 'db' on each kind of database, with an empty table `items`."""
    if request.param == "postgresql":
        config = request.getfixturevalue("pg_config")
    elif request.param == "mysql":
        config = request.getfixturevalue("maria_config")
    else:
        config = {"driver": "sqlite", "database": str(tmp_path / "t.db")}
    conn = ConnectionManager.configure("db", config)
    conn.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))")
    yield conn
    ConnectionManager.close_all()


def rows(conn):
    return conn.execute("SELECT id FROM items ORDER BY id")


def test_leaving_the_block_commits(db):
    with Transaction(db):
        db.execute("INSERT INTO items VALUES (?, ?)", (1, "a"))
    assert rows(db) == [(1,)]


def test_an_exception_rolls_back(db):
    with pytest.raises(ZeroDivisionError), Transaction(db):
        db.execute("INSERT INTO items VALUES (?, ?)", (1, "a"))
        1 / 0  # noqa: B018
    assert rows(db) == []


def test_explicit_rollback_discards_the_writes(db):
    with Transaction(db) as tx:
        db.execute("INSERT INTO items VALUES (?, ?)", (1, "a"))
        tx.rollback()
    assert rows(db) == []


def prepared_xids(request, name):
    if name == "postgresql":
        pg = request.getfixturevalue("pg")
        with pg.admin_connect() as conn:
            gids = [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()]
        return [Xid.from_pg_gid(g) for g in gids]
    maria = request.getfixturevalue("maria")
    conn = maria.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("XA RECOVER")
            return [Xid.from_mysql_recover(*r) for r in cur.fetchall() if r[0] == FORMAT_ID]
    finally:
        conn.close()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@pytest.mark.parametrize("finish", ["commit", "rollback"])
def test_prepared_transaction_is_listed_by_the_database_until_finished(request, dialect, finish):
    config = request.getfixturevalue("pg_config" if dialect == "postgresql" else "maria_config")
    db = ConnectionManager.configure("db", config)
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))")
    try:
        with Transaction(db) as tx:
            db.execute("INSERT INTO items VALUES (?, ?)", (1, "a"))
            xid = tx.prepare()
            assert xid.info.cluster == LOCAL_CLUSTER  # never finished by a coordinator
            assert xid in prepared_xids(request, dialect)
            assert contextvars.Context().run(rows, db) == []  # invisible before phase 2
            with pytest.raises(TwostepError, match="prepared"):
                db.execute("INSERT INTO items VALUES (?, ?)", (2, "b"))
            getattr(tx, finish)()
        assert xid not in prepared_xids(request, dialect)
        assert rows(db) == ([(1,)] if finish == "commit" else [])
    finally:
        ConnectionManager.close_all()


def test_prepare_on_sqlite_is_refused_by_name(tmp_path):
    db = ConnectionManager.configure("notes", {"driver": "sqlite", "database": str(tmp_path / "n")})
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, name TEXT)")
    with pytest.raises(TwoPhaseNotSupported, match=r"'notes'.*sqlite"), Transaction(db) as tx:
        db.execute("INSERT INTO items VALUES (?, ?)", (1, "a"))
        tx.prepare()
    assert rows(db) == []
    ConnectionManager.close_all()


def test_another_connection_inside_a_local_transaction_is_refused(tmp_path):
    a = ConnectionManager.configure("a", {"driver": "sqlite", "database": str(tmp_path / "a")})
    b = ConnectionManager.configure("b", {"driver": "sqlite", "database": str(tmp_path / "b")})
    b.execute("CREATE TABLE items (id INT PRIMARY KEY, name TEXT)")
    with pytest.raises(TwostepError, match="global_transaction"), Transaction(a):
        get_connection("b").execute("INSERT INTO items VALUES (?, ?)", (1, "x"))
    assert rows(b) == []
    ConnectionManager.close_all()
