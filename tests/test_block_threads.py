"""Threads that share a block: one statement at a time per branch, none after the end.

A thread carries a transaction only when it runs in a copy of the block's context
(`contextvars.copy_context().run`). Such threads take turns on each branch session (a lock per
branch), so replies never cross; when the block ends, every branch is closed first (waiting
for a statement in flight), and a later statement raises TransactionEnded without being sent:
it can neither slip in after the snapshot of branches nor run on a PostgreSQL session after
PREPARE TRANSACTION, where it would commit on its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

import pytest
from test_recovery import Databases, dbs_fixture, in_process_fixture, shop_fixture  # noqa: F401

from twostep.client import (
    Transaction,
    TransactionEnded,
    get_connection,
    global_transaction,
)


@pytest.fixture
def address(in_process) -> str:
    return in_process().server.address


def run_in_threads(count: int, work) -> list[BaseException]:
    """Run `work(i)` in `count` threads, each in a copy of the caller's context."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(guarded, i))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    return errors


@pytest.mark.parametrize("name", ["billing", "orders"])
def test_threads_that_share_a_block_take_turns_on_a_branch_session(shop, address, name):
    wrong: list[tuple[int, object]] = []

    def work(i: int) -> None:
        for n in range(150):
            expected = i * 1000 + n
            [(got,)] = get_connection(name).execute("SELECT ? + 0", (expected,))
            if int(got) != expected:
                wrong.append((expected, got))

    with global_transaction(coordinator=address):
        get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
        assert run_in_threads(4, work) == []
    assert wrong == []
    assert shop.rows(name) == {1}


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_thread_racing_the_end_of_the_block_never_writes_outside_it(shop, address, outcome):
    written: list[int] = []
    ended = threading.Event()
    started = threading.Event()

    def keep_writing() -> None:
        row = 100
        try:
            while True:
                for name in ("orders", "billing"):
                    get_connection(name).execute("INSERT INTO t (id) VALUES (?)", (row,))
                written.append(row)  # both sides took it
                started.set()
                row += 1
        except TransactionEnded:
            ended.set()

    class GiveUp(Exception):
        pass

    with pytest.raises(GiveUp) if outcome == "rollback" else contextlib.nullcontext():
        with global_transaction(coordinator=address):
            get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
            get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
            thread = threading.Thread(target=contextvars.copy_context().run, args=(keep_writing,))
            thread.start()
            assert started.wait(30)
            if outcome == "rollback":
                raise GiveUp
    thread.join(30)
    assert ended.is_set()  # the thread was told, not silently served
    if outcome == "commit":
        # Whatever the thread wrote before the end is in the transaction on both sides; an
        # insert that went in on one side only when the end came is rolled back with nothing
        # committed on its own (never after PREPARE).
        expected = {1, *written}
        assert shop.rows("orders") - expected <= {written[-1] + 1}
        assert shop.rows("orders") >= expected
        assert shop.rows("billing") >= expected
    else:
        assert shop.rows("orders") == shop.rows("billing") == set()


def test_a_statement_after_the_block_ended_is_refused_and_not_sent(shop, address):
    with global_transaction(coordinator=address):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        late = contextvars.copy_context()
    with pytest.raises(TransactionEnded, match="was not sent"):
        late.run(get_connection("orders").execute, "INSERT INTO t (id) VALUES (2)")
    assert shop.rows("orders") == {1}


def test_a_statement_after_a_local_transaction_ended_is_refused_and_not_sent(shop):
    with Transaction("orders"):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        late = contextvars.copy_context()
    with pytest.raises(TransactionEnded, match="was not sent"):
        late.run(get_connection("orders").execute, "INSERT INTO t (id) VALUES (2)")
    assert shop.rows("orders") == {1}


# -- threads that did not inherit the block (documented in the README) ---------------------------


def test_a_thread_that_did_not_inherit_the_block_writes_outside_it(shop, address):
    class GiveUp(Exception):
        pass

    with pytest.raises(GiveUp):
        with global_transaction(coordinator=address):
            get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
            outside = threading.Thread(
                target=get_connection("orders").execute, args=("INSERT INTO t (id) VALUES (2)",)
            )
            outside.start()
            outside.join(30)
            raise GiveUp
    assert shop.rows("orders") == {2}  # its own autocommit write survived the rollback


def test_a_thread_outside_the_block_waits_for_a_row_the_block_holds_until_the_block_ends(
    shop, address
):
    with global_transaction(coordinator=address):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        outside = threading.Thread(
            target=get_connection("billing").execute, args=("DELETE FROM t WHERE id = 1",)
        )
        outside.start()
        outside.join(1.0)
        # Waiting for the block's row lock: joining it here without a timeout would hang
        # (PostgreSQL's default lock_timeout is 0, forever; MariaDB's 50 s).
        assert outside.is_alive()
    outside.join(30)
    assert not outside.is_alive()
    assert shop.rows("billing") == set()  # its DELETE ran once the block committed
