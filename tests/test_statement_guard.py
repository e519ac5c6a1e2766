"""A statement never escapes its branch.

Inside a transaction (global or local) a statement that would end, restart or leave it is
refused before it is sent (`StatementRefused`), whatever its spelling: each dialect's lexer
finds the code words, so string literals and comments do not count and MySQL's executable
comments do. The transaction is unchanged and goes on. And before PREPARE (or a one-phase
COMMIT) each branch checks that its session is still inside the transaction it began, and
votes NO loudly if it is not.
"""

from __future__ import annotations

import pytest
from test_recovery import Databases, dbs_fixture, in_process_fixture, shop_fixture  # noqa: F401

from twostep.client import (
    HeuristicOutcome,
    StatementRefused,
    Transaction,
    TransactionAborted,
    get_connection,
    global_transaction,
)

COMMON = [
    "COMMIT",
    "commit;",
    "  /* end it */ Commit work",
    "-- note\nROLLBACK",
    "ROLLBACK WORK",
    "BEGIN",
    "START TRANSACTION",
    "SELECT 1; COMMIT",
    "COMMIT AND CHAIN",
]
REFUSED = {
    "orders": [
        *COMMON,
        "END",
        "end transaction",
        "ABORT",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "SELECT 1 /* /* */ ' */; COMMIT; --'",  # PostgreSQL nests block comments
        "SELECT 'x\\'' ; COMMIT; --'",  # a backslash escape, if standard_conforming_strings=off
        "SELECT E'x\\''; COMMIT",
        "SELECT $q$ ; $q$; COMMIT",
    ],
    "billing": [
        *COMMON,
        "XA END X'01'",
        "xa commit 'x'",
        "SET autocommit = 0",
        "SET @@session.autocommit = 1",
        "set sql_mode = '', AUTOCOMMIT=1",
        "SET `autocommit` = 0",
        "/*!COMMIT*/",
        "/*!50000 COMMIT */",
        "/*M!100100 ROLLBACK */",
        "SELECT 1 /*!; COMMIT */",
        "ROLLBACK WORK RELEASE",
    ],
}
ALLOWED = {
    "orders": [
        "SELECT 'COMMIT'",
        'SELECT 1 AS "commit"',
        "SELECT $$ROLLBACK$$",
        "-- COMMIT",
        "/* /* COMMIT */ */ SELECT 1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
    ],
    "billing": ["SELECT 'COMMIT'", "SET @autocommit = 1", "SELECT 1 -- COMMIT", "# ROLLBACK"],
}


@pytest.fixture
def address(in_process) -> str:
    return in_process().server.address


CASES = [(name, sql) for name, sqls in REFUSED.items() for sql in sqls]


@pytest.mark.parametrize(("name", "sql"), CASES, ids=[f"{n}:{s!r}" for n, s in CASES])
def test_a_statement_that_would_end_the_branch_is_refused_and_the_block_goes_on(
    shop, address, name, sql
):
    with global_transaction(coordinator=address):
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        with pytest.raises(StatementRefused, match="was not sent"):
            get_connection(name).execute(sql)
        get_connection("orders").execute("INSERT INTO t (id) VALUES (2)")
    assert shop.rows("orders") == {1, 2}
    assert shop.rows("billing") == {1}


@pytest.mark.parametrize(
    ("name", "sql"),
    [(n, s) for n, sqls in ALLOWED.items() for s in sqls],
    ids=[f"{n}:{s!r}" for n, sqls in ALLOWED.items() for s in sqls],
)
def test_a_statement_that_only_mentions_a_transaction_word_runs(shop, address, name, sql):
    with global_transaction(coordinator=address):
        get_connection(name).execute(sql)
        get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
    assert shop.rows(name) == {1}


@pytest.mark.parametrize("name", ["orders", "billing"])
def test_a_savepoint_and_a_rollback_to_it_stay_inside_the_branch(shop, address, name):
    with global_transaction(coordinator=address):
        get_connection("orders" if name == "billing" else "billing").execute("SELECT 1")
        get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
        get_connection(name).execute("SAVEPOINT s1")
        get_connection(name).execute("INSERT INTO t (id) VALUES (2)")
        get_connection(name).execute("ROLLBACK TO SAVEPOINT s1")
    assert shop.rows(name) == {1}


def test_the_issues_input_keeps_both_databases_atomic(shop, address):
    # MariaDB insert, PostgreSQL insert, COMMIT on the PostgreSQL connection, another
    # PostgreSQL insert, normal exit: it used to commit PostgreSQL's rows on their own.
    with global_transaction(coordinator=address):
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        with pytest.raises(StatementRefused):
            get_connection("orders").execute("COMMIT")
        get_connection("orders").execute("INSERT INTO t (id) VALUES (2)")
    assert shop.rows("orders") == {1, 2} and shop.rows("billing") == {1}


def test_a_branch_whose_transaction_was_ended_behind_the_guard_votes_no_and_says_so(shop, address):
    # What ran after the COMMIT on the driver session committed on its own: the block is a
    # heuristic outcome (not "nothing committed"), and the other branch is rolled back.
    orders = get_connection("orders")
    with pytest.raises(HeuristicOutcome, match="no longer inside the branch's transaction"):
        with global_transaction(coordinator=address) as gtx:
            get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
            orders.execute("INSERT INTO t (id) VALUES (1)")
            # Straight on the driver session, past the guard (as a library might).
            with gtx.statement_session(orders, None, orders.dialect.statements("")) as raw:
                raw.execute("COMMIT")
            orders.execute("INSERT INTO t (id) VALUES (2)")
    assert shop.rows("billing") == set()  # rolled back with the NO vote
    assert shop.rows("orders") == {1, 2}  # committed on their own, as the error says


def test_a_postgres_session_that_died_in_the_block_is_a_plain_rollback(shop, address):
    with pytest.raises(TransactionAborted, match="session was lost") as info:
        with global_transaction(coordinator=address):
            get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
            get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
            [(pid,)] = get_connection("orders").execute("SELECT pg_backend_pid()")
            with shop.pg.admin_connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert "committed on its own" not in str(info.value)
    assert shop.rows("orders") == shop.rows("billing") == set()


@pytest.mark.parametrize("name", ["orders", "billing"])
def test_a_local_transaction_refuses_them_too(shop, name):
    with Transaction(name):
        get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
        with pytest.raises(StatementRefused):
            get_connection(name).execute("ROLLBACK")
    assert shop.rows(name) == {1}


def test_outside_a_transaction_the_same_statements_are_the_users_own(shop):
    get_connection("orders").execute("BEGIN")
    get_connection("orders").execute("ROLLBACK")
    get_connection("billing").execute("SET autocommit = 1")
