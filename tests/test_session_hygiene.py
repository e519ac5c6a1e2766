"""A pooled session comes back clean, and a dead one never comes back at all.

Whatever a branch changes in a session (MariaDB's lock wait and idle timeouts, the write
counter it keeps in a user variable) is put back before the session is pooled again, to the
session's own values (a user's init_command included); PostgreSQL's lock timeout is SET LOCAL.
A session that saw a connection-level error is closed, never pooled; checkout notices a
session the server ended while it sat in the pool; the caller's next statement succeeds.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_recovery import Databases, dbs_fixture, in_process_fixture  # noqa: F401

from twostep.client import (
    ConnectionManager,
    DatabaseError,
    TransactionAborted,
    get_connection,
    global_transaction,
)
from twostep.client._transaction import Transaction


@pytest.fixture
def shop(dbs: Databases) -> Iterator[Databases]:
    # pool_size=1: every statement after the block runs on the session the branch used.
    ConnectionManager.configure("orders", {**dbs.configs["orders"], "pool_size": 1})
    ConnectionManager.configure("billing", {**dbs.configs["billing"], "pool_size": 1})
    yield dbs
    ConnectionManager.close_all()


def session_settings(name: str) -> tuple[Any, ...]:
    if name == "billing":
        [row] = get_connection("billing").execute(
            "SELECT CONNECTION_ID(), @@session.innodb_lock_wait_timeout, @@session.wait_timeout,"
            " @twostep_lock_wait, @twostep_wait, @twostep_writes"
        )
        return row
    [row] = get_connection("orders").execute(
        "SELECT pg_backend_pid(), current_setting('lock_timeout')"
    )
    return row


def aborted_block(address: str) -> None:
    with pytest.raises(TransactionAborted), global_transaction(coordinator=address, timeout=3):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        raise TransactionAborted("the block gives up")


def committed_block(address: str) -> None:
    with global_transaction(coordinator=address, timeout=3):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (2)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (2)")


def read_only_block(address: str) -> None:
    with global_transaction(coordinator=address, timeout=3):
        get_connection("billing").execute("SELECT COUNT(*) FROM t")  # counts writes
        get_connection("orders").execute("INSERT INTO t (id) VALUES (3)")


def mariadb_only_block(address: str) -> None:
    with global_transaction(coordinator=address, timeout=3):
        get_connection("billing").execute("INSERT INTO t (id) VALUES (4)")


def local_transaction(address: str) -> None:
    with Transaction("billing", timeout=3):
        get_connection("billing").execute("INSERT INTO t (id) VALUES (5)")


BLOCKS: dict[str, Callable[[str], None]] = {
    "committed": committed_block,
    "aborted": aborted_block,
    "read-only branch": read_only_block,
    "one-phase": mariadb_only_block,
    "local transaction": local_transaction,
}


@pytest.mark.parametrize("block", list(BLOCKS.values()), ids=list(BLOCKS))
def test_every_setting_a_branch_changed_is_restored_before_the_session_is_pooled(
    shop, in_process, block
):
    coordinator = in_process()
    before = {name: session_settings(name) for name in ("billing", "orders")}
    block(coordinator.server.address)
    after = {name: session_settings(name) for name in ("billing", "orders")}
    assert after == before  # the same sessions (same ids), with the same settings
    assert after["billing"][3:] == (None, None, None)


def test_a_users_own_session_setting_is_what_comes_back(shop, in_process):
    # init_command sets the session's value: restored to it, not to the server's default.
    options = {"init_command": "SET SESSION innodb_lock_wait_timeout = 17"}
    config = {**shop.configs["billing"], "pool_size": 1, "options": options}
    ConnectionManager.configure("billing", config)
    committed_block(in_process().server.address)
    assert session_settings("billing")[1:3] == (17, 28800)


def test_the_next_autocommit_statement_waits_its_own_lock_timeout(shop, in_process):
    # The input: after a block with timeout=0.5 the pooled MariaDB session kept
    # innodb_lock_wait_timeout=1, and the next plain UPDATE gave up after 1 s (1205). The
    # blocks here have a 3 s deadline (lock wait 3): time enough to commit on a loaded machine.
    committed_block(in_process().server.address)
    assert session_settings("billing")[1] == 50  # MariaDB's default, not 1


def set_statements_in_branch(address: str, row_id: int) -> tuple[int, int]:
    """(session id, SET statements the session has run so far), read inside a MariaDB branch."""
    with global_transaction(coordinator=address, timeout=30):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (?)", (row_id,))
        billing = get_connection("billing")
        billing.execute("INSERT INTO t (id) VALUES (?)", (row_id,))
        [(session, _, sets)] = billing.execute(
            "SELECT CONNECTION_ID(), v.* FROM information_schema.SESSION_STATUS v"
            " WHERE VARIABLE_NAME = 'COM_SET_OPTION'"
        )
    return int(session), int(sets)


def test_a_branch_after_a_branch_on_a_pooled_session_sends_no_set(shop, in_process):
    address = in_process().server.address
    first = set_statements_in_branch(address, 10)
    # Same session (pool_size=1), same timeouts: XA START alone, no SET before or after.
    assert set_statements_in_branch(address, 11) == first
    assert set_statements_in_branch(address, 12) == first
    # A plain use in between puts the session's own settings back: the next branch sets anew.
    assert session_settings("billing")[1:3] == (50, 28800)
    session, sets = set_statements_in_branch(address, 13)
    assert (session, sets) == (first[0], first[1] + 2)  # the restore, then save-and-set


# -- dead sessions -------------------------------------------------------------------------------


def session_id(name: str) -> int:
    sql = "SELECT CONNECTION_ID()" if name == "billing" else "SELECT pg_backend_pid()"
    [(session,)] = get_connection(name).execute(sql)
    return int(session)


def end_session(shop: Databases, name: str, session: int) -> None:
    """End session `session` from the server's side (KILL, pg_terminate_backend)."""
    if name == "billing":
        with contextlib.closing(shop.maria.admin_connect()) as admin, admin.cursor() as cur:
            cur.execute(f"KILL CONNECTION {session}")
    else:
        with shop.pg.admin_connect() as admin:
            # Waits until the backend has ended (5 s at most): without a timeout it returns
            # once signalled, and the session's socket may not show the end yet.
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (session,))


@pytest.mark.parametrize("name", ["billing", "orders"])
def test_a_session_the_server_ended_in_the_pool_is_not_handed_out(shop, name):
    end_session(shop, name, session_id(name))  # the one idle session of the pool
    # At once (well within the 1 s after which pooled sessions are pinged anyway).
    assert get_connection(name).execute("SELECT 1") == [(1,)]


def test_a_session_that_saw_max_allowed_packet_is_discarded(shop):
    [(limit,)] = get_connection("billing").execute("SELECT @@max_allowed_packet")
    get_connection("billing").execute("CREATE TABLE blobs (b LONGBLOB)")
    with pytest.raises(DatabaseError):
        get_connection("billing").execute("INSERT INTO blobs VALUES (?)", (b"x" * (limit + 1),))
    assert get_connection("billing").execute("SELECT 1") == [(1,)]


@pytest.mark.parametrize("name", ["billing", "orders"])
def test_a_session_killed_during_its_statement_is_discarded(shop, name):
    session = session_id(name)
    sleep = "SELECT SLEEP(5)" if name == "billing" else "SELECT pg_sleep(5)"
    killer = threading.Timer(0.3, end_session, (shop, name, session))
    killer.start()
    with pytest.raises(DatabaseError):
        get_connection(name).execute(sleep)
    killer.join()
    assert get_connection(name).execute("SELECT 1") == [(1,)]


@pytest.mark.parametrize("name", ["billing", "orders"])
def test_a_branch_starts_on_a_new_session_when_its_pooled_one_was_just_ended(
    shop, in_process, name
):
    # The server's goodbye may still be on its way when the session is checked out: the
    # branch's first statement fails with a connection error, nothing was done on it, so the
    # branch starts again on a new session (a plain statement is not retried: it may have run).
    address = in_process().server.address
    for row in range(10):
        end_session(shop, name, session_id(name))  # the pool's one idle session
        with global_transaction(coordinator=address):
            get_connection(name).execute("INSERT INTO t (id) VALUES (?)", (row,))
    assert shop.rows(name) == set(range(10))
