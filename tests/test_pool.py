"""The bounded pool of a named connection, on the real PostgreSQL and MariaDB.

At most `pool_size + max_overflow` sessions are open at once (counted by the server); a caller
that finds them all in use waits, in turn, up to `pool_timeout` and then gets `PoolTimeout`
naming the connection and the cap, with nothing sent; in steady state no transaction opens a
session; a dead pooled session is replaced in its own place; a forked child gets a pool of its
own while the parent's sessions, even all of them in use, stay the parent's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tcp_proxy import TcpProxy
from test_recovery import Databases, dbs_fixture, in_process_fixture  # noqa: F401

import twostep.client._connections as connections_module
from twostep.client import (
    ActiveRecord,
    ConfigurationError,
    Connection,
    ConnectionManager,
    PoolTimeout,
    Transaction,
    TwostepError,
    get_connection,
    global_transaction,
)
from twostep.coordinator._registry import Resource, parse_resources
from twostep.testing import run_in_process

SERVERS = ["postgresql", "mysql"]
SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


@pytest.fixture
def configs(pg_config, maria_config) -> dict[str, dict[str, Any]]:
    return {"postgresql": pg_config, "mysql": maria_config}


@pytest.fixture(autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    ConnectionManager.close_all()


def open_sessions(server: Any, dialect: str, database: str) -> int:
    """Sessions the server has open on `database` for twostep (not counting the caller's)."""
    if dialect == "postgresql":
        with server.admin_connect() as admin:
            [(count,)] = admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'twostep'",
                [database],
            )
        return int(count)
    with contextlib.closing(server.admin_connect()) as admin, admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s", [database])
        [(count,)] = cur.fetchall()
    return int(count)


def server_for(request: pytest.FixtureRequest, dialect: str) -> Any:
    return request.getfixturevalue("pg" if dialect == "postgresql" else "maria")


def count_connects(monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    """Every session a Connection made from now on opens: its connection, once each (the
    coordinator's own connections included)."""
    opened: list[Connection] = []
    connect = Connection.connect

    def counting(self: Connection) -> Any:
        opened.append(self)
        return connect(self)

    monkeypatch.setattr(Connection, "connect", counting)
    return opened


# -- the cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", SERVERS)
def test_open_sessions_never_exceed_pool_size_plus_max_overflow(request, configs, dialect):
    """32 threads on pool_size 2 + max_overflow 2, counted by the server while they run."""
    config = {**configs[dialect], "pool_size": 2, "max_overflow": 2, "pool_timeout": 60}
    connection = ConnectionManager.configure("capped", config)
    server, database = server_for(request, dialect), config["database"]
    pause = "SELECT pg_sleep(0.002)" if dialect == "postgresql" else "SELECT SLEEP(0.002)"
    stop = threading.Event()
    errors: list[BaseException] = []
    statements = [0] * 32

    def work(number: int) -> None:
        try:
            while not stop.is_set():
                connection.execute(pause)
                statements[number] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    try:
        # Counted while every thread is in the loop: waiters never run out, so no session is
        # closed (a closed one may linger on the server a moment) and none is opened past 4.
        seen = [open_sessions(server, dialect, database) for _ in range(60)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert max(seen) == 4, seen  # reached, never passed
    assert all(statements), "a thread was never served: waiters take turns"


def test_pool_size_sessions_stay_open_and_the_overflow_ones_close_when_given_back(tmp_path):
    config = {"driver": "sqlite", "database": str(tmp_path / "c.db"), "pool_timeout": 0.05}
    connection = ConnectionManager.configure(
        "capped", {**config, "pool_size": 1, "max_overflow": 1}
    )
    one, two = connection.acquire(), connection.acquire()
    connection.release(one)  # kept: fewer than pool_size idle
    assert connection.acquire() is one  # the idle one, not a third
    with pytest.raises(PoolTimeout):
        connection.acquire()  # two open, both in use
    connection.release(two)  # kept: none idle
    connection.release(one)  # closed: pool_size (1) idle already
    assert connection._pool.idle_sessions() == [two]
    assert not connection.dialect.is_idle(one)


# -- waiting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", SERVERS)
def test_a_wait_past_pool_timeout_raises_pool_timeout_naming_the_connection_and_the_cap(
    configs, dialect
):
    config = {**configs[dialect], "pool_size": 1, "max_overflow": 1, "pool_timeout": 0.2}
    connection = ConnectionManager.configure("busy", config)
    connection.execute("CREATE TABLE notes (body VARCHAR(20))")
    held = [connection.acquire(), connection.acquire()]
    with pytest.raises(PoolTimeout) as waited:
        connection.execute("INSERT INTO notes (body) VALUES (?)", ("never sent",))
    error = waited.value
    assert isinstance(error, TwostepError)
    assert (error.connection, error.cap, error.timeout) == ("busy", 2, 0.2)
    assert "'busy'" in str(error) and "all 2" in str(error)
    assert "pool_size 1 + max_overflow 1" in str(error) and "nothing was sent" in str(error)
    for session in held:
        connection.release(session)
    assert connection.execute("SELECT COUNT(*) FROM notes") == [(0,)]  # it was not sent


def test_a_session_given_back_goes_to_the_caller_that_waited_longest(tmp_path):
    config = {"driver": "sqlite", "database": str(tmp_path / "w.db"), "pool_size": 1}
    connection = ConnectionManager.configure("turns", {**config, "max_overflow": 0})
    held = connection.acquire()
    served: list[int] = []
    waiting = []
    for number in range(3):

        def wait(number: int = number) -> None:
            session = connection.acquire()
            served.append(number)
            connection.release(session)

        thread = threading.Thread(target=wait)
        thread.start()
        waiting.append(thread)
        while len(connection._pool._waiters) <= number:  # in line before the next one
            time.sleep(0.001)
    connection.release(held)
    for thread in waiting:
        thread.join()
    assert served == [0, 1, 2]


def test_inside_a_global_transaction_a_full_pool_aborts_the_block_with_nothing_sent(
    dbs, in_process
):
    coordinator = in_process()
    ConnectionManager.configure("orders", dbs.configs["orders"])
    billing = ConnectionManager.configure(
        "billing",
        {**dbs.configs["billing"], "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2},
    )
    held = billing.acquire()
    try:
        with pytest.raises(PoolTimeout, match=r"'billing'.*nothing was sent"):
            with global_transaction(coordinator=coordinator.server.address, timeout=30):
                get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
                get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    finally:
        billing.release(held)
    assert get_connection("orders").execute("SELECT COUNT(*) FROM t") == [(0,)]
    assert get_connection("billing").execute("SELECT COUNT(*) FROM t") == [(0,)]
    assert dbs.prepared("orders") == set() and dbs.prepared("billing") == set()


class Entry(ActiveRecord):
    __connection__ = "ledger"
    __tablename__ = "entries"


@pytest.mark.parametrize("dialect", SERVERS)
def test_a_transaction_holding_the_only_session_reads_a_new_table_without_waiting(configs, dialect):
    """The model's first use reads the table's definition; the transaction holds the one
    session the pool may open, so that read may not wait for a pooled session."""
    config = {**configs[dialect], "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    ledger = ConnectionManager.configure("ledger", config)
    ledger.execute("CREATE TABLE entries (id INT PRIMARY KEY, amount INT NOT NULL)")
    ledger.forget_tables()
    with Transaction(ledger):
        ledger.execute("SELECT 1")  # the transaction holds the session from here on
        Entry.create(id=1, amount=5)
    assert ledger.execute("SELECT id, amount FROM entries") == [(1, 5)]


# -- steady state ------------------------------------------------------------------------------


def test_steady_state_transactions_open_no_session(dbs, in_process, monkeypatch):
    """8 threads of global transactions on 4 sessions per database: they take turns on the
    sessions the warm-up opened (the pool before this one opened a session for every
    transaction past its 4 idle, and closed one at every release)."""
    opened = count_connects(monkeypatch)
    for name in ("orders", "billing"):
        config = {**dbs.configs[name], "pool_size": 4, "max_overflow": 0, "pool_timeout": 30}
        ConnectionManager.configure(name, config)
    for name in ("orders", "billing"):
        connection = get_connection(name)
        warm = [connection.acquire() for _ in range(4)]
        for session in warm:
            connection.release(session)
    mine = [get_connection("orders"), get_connection("billing")]
    assert [opened.count(connection) for connection in mine] == [4, 4]
    address = in_process().server.address
    sessions: set[tuple[str, int]] = set()
    errors: list[BaseException] = []

    def transfers(number: int) -> None:
        try:
            for n in range(8):
                key = number * 100 + n
                with global_transaction(coordinator=address, timeout=30):
                    for name in ("orders", "billing"):
                        connection = get_connection(name)
                        connection.execute("INSERT INTO t (id) VALUES (?)", (key,))
                        [(session,)] = connection.execute(SESSION_ID[connection.dialect.name])
                        sessions.add((name, session))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=transfers, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # 64 transactions on two databases opened nothing
    assert [opened.count(connection) for connection in mine] == [4, 4]
    assert len(sessions) <= 8
    for name in ("orders", "billing"):
        assert get_connection(name).execute("SELECT COUNT(*) FROM t") == [(64,)]


# -- dead sessions -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", SERVERS)
def test_dead_pooled_sessions_are_replaced_in_their_own_places(
    request, configs, dialect, monkeypatch
):
    """The network drops every session while they sit in a full pool (cap 2): the next
    callers get new ones at once, no waiting, and the cap still holds."""
    # The resets may reach the client's sockets a moment after cut() returns: ping on every
    # checkout, so that a session is judged dead whether or not its socket shows it yet.
    monkeypatch.setattr(connections_module, "_PING_AFTER_S", 0.0)
    server = server_for(request, dialect)
    proxy = TcpProxy(server.port)
    try:
        config = {**configs[dialect], "port": proxy.port, "pool_size": 2, "max_overflow": 0}
        connection = ConnectionManager.configure("cut", {**config, "pool_timeout": 0.5})
        first = [connection.acquire(), connection.acquire()]
        before = {connection.dialect.run(s, SESSION_ID[dialect]).rows[0][0] for s in first}
        for session in first:
            connection.release(session)
        proxy.cut()
        both = [connection.acquire(), connection.acquire()]  # no PoolTimeout: places reused
        after = {connection.dialect.run(s, SESSION_ID[dialect]).rows[0][0] for s in both}
        for session in both:
            connection.release(session)
        assert len(after) == 2 and not after & before
        # The server ends the cut sessions when it next reads from them.
        give_up = time.monotonic() + 10
        while open_sessions(server, dialect, config["database"]) > 2 and time.monotonic() < give_up:
            time.sleep(0.05)
        assert open_sessions(server, dialect, config["database"]) == 2
    finally:
        proxy.close()


# -- fork --------------------------------------------------------------------------------------

_FORK = multiprocessing.get_context("fork")


def child_uses_its_own_pool(out: Any) -> None:
    connection = get_connection("forked")
    sessions = [connection.acquire(), connection.acquire()]  # the parent holds both of its own
    query = SESSION_ID[connection.dialect.name]
    ids = [connection.dialect.run(s, query).rows[0][0] for s in sessions]
    for session in sessions:
        connection.release(session)
    out.put(ids)


def fork_while_the_pool_is_full_and_a_thread_waits(config: dict[str, Any]) -> None:
    """The forking parent; run in a fresh interpreter (`run_in_process`), not in the test
    process: gRPC threads of the test process's own (grpc.aio's poller, left by in-process
    coordinators) make grpc's at-fork handlers abort a forked child now and then (tests/
    test_fork.py says more)."""
    connection = ConnectionManager.configure("forked", config)
    dialect = connection.dialect.name
    held = [connection.acquire(), connection.acquire()]
    parents = [connection.dialect.run(s, SESSION_ID[dialect]).rows[0][0] for s in held]
    waiter_got: list[Any] = []
    waiter = threading.Thread(target=lambda: waiter_got.append(connection.acquire()))
    waiter.start()
    while not connection._pool._waiters:  # the pool's lock and its line of waiters are busy
        time.sleep(0.001)
    out = _FORK.SimpleQueue()
    child = _FORK.Process(target=child_uses_its_own_pool, args=(out,))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    children = out.get()
    assert len(set(children)) == 2 and not set(children) & set(parents)
    # The parent's sessions are untouched: the one given back goes to the waiting thread.
    connection.release(held[0])
    waiter.join(30)
    assert waiter_got == [held[0]]
    for session in (held[1], waiter_got[0]):
        assert connection.dialect.run(session, SESSION_ID[dialect]).rows[0][0] in parents
        connection.release(session)


@pytest.mark.parametrize("dialect", SERVERS)
def test_a_child_forked_while_the_pool_is_full_and_a_thread_waits_gets_a_pool_of_its_own(
    configs, dialect
):
    config = {**configs[dialect], "pool_size": 1, "max_overflow": 1, "pool_timeout": 30}
    run = run_in_process(fork_while_the_pool_is_full_and_a_thread_waits, (config,), timeout=90)
    assert run.returned and run.error is None, run.describe()


# -- configuration -----------------------------------------------------------------------------


def test_pool_fields_default_to_8_kept_8_more_and_5_seconds() -> None:
    connection = Connection.from_config("cfg", {"driver": "sqlite", "database": "x.db"})
    settings = connection.settings
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (8, 8, 5.0)
    assert connection._pool.cap == 16


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_overflow": -1}, "'max_overflow'"),
        ({"max_overflow": 1001}, "'max_overflow'"),
        ({"max_overflow": True}, "'max_overflow'"),
        ({"pool_timeout": 0}, "'pool_timeout'"),
        ({"pool_timeout": "soon"}, "'pool_timeout'"),
        ({"pool_timeout": float("inf")}, "'pool_timeout'"),
        ({"pool_size": 0, "max_overflow": 0}, "'pool_size' and 'max_overflow' are both 0"),
    ],
)
def test_malformed_pool_fields_are_configuration_errors_naming_them(fields, named) -> None:
    config = {"driver": "postgresql", "host": "h", "database": "d", "username": "u", **fields}
    with pytest.raises(ConfigurationError, match=rf"connection 'cfg'.*{named}"):
        ConnectionManager.configure("cfg", config)


def test_pool_size_0_keeps_nothing_idle_within_the_overflow_cap(tmp_path) -> None:
    config = {"driver": "sqlite", "database": str(tmp_path / "z.db"), "pool_size": 0}
    connection = ConnectionManager.configure("cfg", {**config, "max_overflow": 2})
    session = connection.acquire()
    connection.release(session)
    assert not connection.dialect.is_idle(session)  # closed
    assert connection._pool.cap == 2


def test_coordinator_resources_take_the_pool_fields(tmp_path) -> None:
    table = {"driver": "mariadb", "host": "h", "database": "d", "username": "u"}
    pool = {"pool_size": 2, "max_overflow": 3, "pool_timeout": 1.5}
    (config,) = parse_resources(
        {"billing": {**table, **pool}}, source="t", environ={}, base_dir=tmp_path
    )
    settings = Resource(config).connection.settings
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (2, 3, 1.5)
    with pytest.raises(ValueError, match=r"\[resources.billing\].*'pool_timeout'"):
        parse_resources(
            {"billing": {**table, "pool_timeout": -1}}, source="t", environ={}, base_dir=tmp_path
        )
