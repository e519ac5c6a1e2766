"""Forking after twostep was used: the child starts clean, the parent keeps what it had.

The bank of the crash suite (tests/bank.py): each transfer debits an account on PostgreSQL and
credits one on MariaDB in one global transaction, and `Bank.violations()` checks every
invariant (money conserved, each transfer on both sides or neither, nothing left prepared or
locked, what a client was told is true). Children are forked by multiprocessing's fork start
method and by gunicorn `--preload`, after the parent ran plain queries on both databases or a
global transaction; no child may hang or crash, and the parent's pooled sessions must be the
same sessions afterwards and still work (a child that closed an inherited session with the
protocol's goodbye would have ended it).

The forking parent is never this test process: it is a fresh interpreter (`in_a_fresh_parent`)
that holds what an application holds. The test process also holds gRPC state of its own: an
in-process coordinator of an earlier test leaves grpc.aio's poller thread running for the
life of the process, and with it grpc's at-fork handlers abort a forked child now and then
("Check failed: next_worker->state == KICKED", measured: 6 children in 1,320 forks; none in
600 from a process with only twostep's client channels). The README says not to fork a
process that holds gRPC threads of its own; these tests must not do it either.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bank import MARIA, PG, Bank
from bank_worker import Journal, transfer

from twostep.client import (
    ConnectionManager,
    GlobalTransaction,
    Transaction,
    TwostepError,
    get_connection,
    global_transaction,
)
from twostep.testing import run_in_process

CHILDREN = 4
TRANSFERS = 8  # per child
PARENT_TRANSFERS = 30
JOIN_TIMEOUT_S = 30.0  # for all children together; a hung child fails the test
_FORK = multiprocessing.get_context("fork")


@pytest.fixture
def bank(pg, maria, pg_config, maria_config, tmp_path) -> Iterator[Bank]:
    """The bank's schema, its two connections configured in this process, and a coordinator
    that knows both databases (so it could finish anything a test left prepared)."""
    bank = Bank(pg, maria, pg_config, maria_config, tmp_path / "bank", accounts=10)
    ConnectionManager.configure(PG, pg_config)
    ConnectionManager.configure(MARIA, maria_config)
    yield bank
    ConnectionManager.close_all()
    bank.close()


@pytest.fixture
def bank_coordinator(bank, coordinator_factory):
    return coordinator_factory(bank.coordinator_dir, args=bank.coordinator_args())


def settings_for(bank: Bank, coordinator, journal: Path, tag: str) -> dict[str, Any]:
    """bank_worker.py's settings, straight to the servers (no proxies)."""
    return {
        "coordinator": coordinator.address,
        "pg": bank.pg_config,
        "maria": bank.maria_config,
        "journal": str(journal),
        "timeout": 10.0,
        "accounts": bank.accounts,
        "tag": tag,
    }


def warm_up(kind: str, settings: dict[str, Any]) -> None:
    """What the parent does before it forks: plain queries, or one global transaction."""
    if kind == "transaction":
        assert transfer(settings, Journal(settings["journal"]), "parent-0", random.Random(0))
    else:
        plain_queries()


def plain_queries() -> None:
    get_connection(PG).execute("SELECT count(*) FROM accounts")
    get_connection(MARIA).execute("SELECT count(*) FROM accounts")


def pooled_sessions() -> list[tuple[Any, Any]]:
    """(connection, driver session) of every idle pooled session of both connections."""
    found = []
    for name in (PG, MARIA):
        connection = get_connection(name)
        found += [(connection, session) for session in connection._pool.idle_sessions()]
    return found


def assert_alive(sessions: list[tuple[Any, Any]]) -> None:
    """Each session answers a statement itself: the server did not end it."""
    for connection, session in sessions:
        connection.dialect.run(session, "SELECT 1", connection=connection.name)


def run_children(target: Callable[..., None], *args: Any) -> list[int | None]:
    """Fork CHILDREN processes running `target(number, *args)`; their exit codes. Fails,
    after killing them, if any is still running after JOIN_TIMEOUT_S."""
    children = [_FORK.Process(target=target, args=(n, *args)) for n in range(CHILDREN)]
    for child in children:
        child.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    hung = [child.pid for child in children if child.is_alive()]
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(5)
    assert not hung, f"children {hung} still running after {JOIN_TIMEOUT_S} s: they hang"
    return [child.exitcode for child in children]


def in_a_fresh_parent(function: Callable[..., Any], settings: dict[str, Any], *args: Any) -> Any:
    """What `function(*args)` returns, run as the forking parent in a fresh interpreter with
    the bank's two connections configured (see the module docstring); fails, with its
    output, if it raised or did not end in time."""
    run = run_in_process(_as_parent, (function, settings, *args), timeout=3 * JOIN_TIMEOUT_S)
    assert run.returned and run.error is None, run.describe()
    return run.value


def _as_parent(function: Callable[..., Any], settings: dict[str, Any], *args: Any) -> Any:
    ConnectionManager.configure(PG, settings["pg"])
    ConnectionManager.configure(MARIA, settings["maria"])
    try:
        return function(*args)
    finally:
        ConnectionManager.close_all()


def make_transfers(number: int, settings: dict[str, Any]) -> None:
    journal = Journal(settings["journal"])
    rng = random.Random(f"{settings['tag']}-{number}")
    for n in range(TRANSFERS):
        transfer(settings, journal, f"{settings['tag']}-{number}-{n}", rng)


def assert_bank_intact(bank: Bank, coordinator, committed: int) -> None:
    bank.recover(coordinator)  # one pass when nothing is prepared
    assert bank.violations(coordinator) == []
    counts = bank.journal().counts()
    assert counts == {"committed": committed}, counts


# -- multiprocessing, fork start method ---------------------------------------------------------


def fork_transfers_after(warmup: str, settings: dict[str, Any]) -> None:
    warm_up(warmup, settings)
    inherited = pooled_sessions()
    assert {c.name for c, _ in inherited} == {PG, MARIA}

    assert run_children(make_transfers, settings) == [0] * CHILDREN

    assert_alive(inherited)
    assert {id(s) for _, s in inherited} <= {id(s) for _, s in pooled_sessions()}
    # The parent still makes transfers, with what it built before the fork.
    assert transfer(settings, Journal(settings["journal"]), "parent-1", random.Random(1))


@pytest.mark.parametrize("warmup", ["queries", "transaction"])
def test_forked_children_transfer_without_losing_money_and_the_parent_keeps_its_sessions(
    bank, bank_coordinator, warmup
):
    settings = settings_for(bank, bank_coordinator, bank.journal_path("all"), "c")
    in_a_fresh_parent(fork_transfers_after, settings, warmup, settings)
    parent = 2 if warmup == "transaction" else 1
    assert_bank_intact(bank, bank_coordinator, CHILDREN * TRANSFERS + parent)


def fork_during_a_transfer(settings: dict[str, Any]) -> None:
    parent_settings = {**settings, "tag": "p"}
    done: list[bool] = []

    def parent_transfers() -> None:
        journal, rng = Journal(settings["journal"]), random.Random("p")
        for n in range(PARENT_TRANSFERS):
            done.append(transfer(parent_settings, journal, f"p-{n}", rng))

    thread = threading.Thread(target=parent_transfers, name="parent-transfers")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:  # fork while it is under way
            time.sleep(0.001)
        codes = run_children(make_transfers, settings)
    finally:
        thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive(), "the parent's transfers hang"
    assert codes == [0] * CHILDREN


def test_forking_while_another_thread_is_mid_transfer_leaves_both_processes_intact(
    bank, bank_coordinator
):
    """The children inherit sessions checked out by a transfer, a pool lock that may be held
    and coordinator calls in flight; the parent's thread goes on with its transfers."""
    settings = settings_for(bank, bank_coordinator, bank.journal_path("all"), "c")
    in_a_fresh_parent(fork_during_a_transfer, settings, settings)
    assert_bank_intact(bank, bank_coordinator, CHILDREN * TRANSFERS + PARENT_TRANSFERS)


def close_everything_inherited(number: int, inherited: list[tuple[Any, Any]], out) -> None:
    """The worst a child can do with what it inherited: close it all, goodbye included."""
    for connection, session in inherited:
        connection.dialect.close(session)
    ConnectionManager.close_all()
    # Its own sessions work: new ones, on server sessions of its own.
    pg_backend = get_connection(PG).execute("SELECT pg_backend_pid()")[0][0]
    maria_session = get_connection(MARIA).execute("SELECT CONNECTION_ID()")[0][0]
    out.put((pg_backend, maria_session))


def fork_children_that_close_everything() -> None:
    plain_queries()
    inherited = pooled_sessions()
    parents = (
        get_connection(PG).execute("SELECT pg_backend_pid()")[0][0],
        get_connection(MARIA).execute("SELECT CONNECTION_ID()")[0][0],
    )
    out = _FORK.SimpleQueue()

    assert run_children(close_everything_inherited, inherited, out) == [0] * CHILDREN

    children = [out.get() for _ in range(CHILDREN)]
    assert all(pg != parents[0] and maria != parents[1] for pg, maria in children)
    assert_alive(inherited)
    assert get_connection(PG).execute("SELECT pg_backend_pid()")[0][0] == parents[0]
    assert get_connection(MARIA).execute("SELECT CONNECTION_ID()")[0][0] == parents[1]


def test_a_child_closing_every_inherited_session_does_not_end_the_parents(bank):
    in_a_fresh_parent(
        fork_children_that_close_everything, {"pg": bank.pg_config, "maria": bank.maria_config}
    )


def use_the_inherited_transaction(number: int, tx, out) -> None:
    """Every way a child could touch its parent's open transaction; what each one raised."""
    attempts: dict[str, Callable[[], object]] = {
        "statement": lambda: get_connection(PG).execute("SELECT 1"),
        "nested block": lambda: _nested_block(tx),
    }
    if isinstance(tx, GlobalTransaction):  # what leaving its block runs
        attempts["commit"] = tx._commit
        attempts["abort"] = lambda: tx._abort("child")
    else:
        attempts["commit"] = tx.commit
        attempts["rollback"] = tx.rollback
    refused = {}
    for what, attempt in attempts.items():
        try:
            attempt()
        except TwostepError as exc:
            refused[what] = str(exc)
    out.put(refused)


def _nested_block(tx: GlobalTransaction | Transaction) -> None:
    """A new block in the child: it joins the inherited one (global), or may not start inside
    it (local); either way nothing reaches the parent's sessions."""
    if isinstance(tx, GlobalTransaction):
        with global_transaction(timeout=5):
            get_connection(MARIA).execute("SELECT 1")
    else:
        with Transaction(get_connection(MARIA)):
            get_connection(MARIA).execute("SELECT 1")


def fork_inside_a_transaction(kind: str, coordinator: str) -> str | None:
    """Forks children inside a transaction that moves 5 from PostgreSQL account 1 (to MariaDB
    account 1 if `kind` is "global"), checks what each child was refused, commits; the
    gtrid."""
    out = _FORK.SimpleQueue()
    if kind == "global":
        block = global_transaction(coordinator, timeout=20)
    else:
        block = Transaction(get_connection(PG), timeout=20)
    with block as tx:
        get_connection(PG).execute("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
        if kind == "global":
            get_connection(MARIA).execute("UPDATE accounts SET balance = balance + 5 WHERE id = 1")
        assert run_children(use_the_inherited_transaction, tx, out) == [0] * CHILDREN
    refused = [out.get() for _ in range(CHILDREN)]
    expected = {"statement", "nested block", "commit", "abort" if kind == "global" else "rollback"}
    for child in refused:
        assert set(child) == expected, child
        ends = {what: message for what, message in child.items() if what != "nested block"}
        assert all("forked from it" in message for message in ends.values()), child
    return tx.gtrid if isinstance(tx, GlobalTransaction) else None


@pytest.mark.parametrize("kind", ["global", "local"])
def test_a_child_forked_inside_a_transaction_cannot_use_or_end_it(bank, bank_coordinator, kind):
    settings = settings_for(bank, bank_coordinator, bank.journal_path("all"), "c")
    gtrid = in_a_fresh_parent(fork_inside_a_transaction, settings, kind, bank_coordinator.address)
    # The parent's transaction was untouched and committed.
    assert get_connection(PG).execute("SELECT balance FROM accounts WHERE id = 1") == [
        (1_000_000 - 5,)
    ]
    if kind == "global":
        assert get_connection(MARIA).execute("SELECT balance FROM accounts WHERE id = 1") == [
            (1_000_000 + 5,)
        ]
        assert bank_coordinator.get(gtrid).state_name == "COMMITTED"


# -- gunicorn --preload -------------------------------------------------------------------------

_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
_TROUBLE = re.compile(r"WORKER TIMEOUT|was sent SIG|exited with code|Traceback", re.IGNORECASE)
REQUESTS = 48
CLIENTS = 8


class Gunicorn:
    """`gunicorn --preload -w 4` serving tests/fork_app.py; stderr kept in `output`."""

    def __init__(self, app_settings: dict[str, Any]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
        env["FORK_APP"] = json.dumps(app_settings)
        command = [sys.executable, "-m", "gunicorn", "--preload", "-w", "4"]
        command += ["-b", "127.0.0.1:0", "--timeout", "20", "--graceful-timeout", "5"]
        command += ["--chdir", str(Path(__file__).parent), "fork_app:app"]
        self._proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._booted = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, name="gunicorn-stderr", daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match[1])
            if sum("Booting worker" in seen for seen in self._lines) == 4:
                self._booted.set()

    def wait_booted(self, timeout: float) -> None:
        if not self._booted.wait(timeout) or not self.port:
            self.stop()
            raise AssertionError(f"gunicorn did not boot 4 workers in {timeout} s:\n{self.output}")

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return f"{response.status} {response.read().decode()}"
        except OSError as exc:
            return f"no answer: {exc!r}"
        finally:
            conn.close()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)


@pytest.mark.parametrize("warmup", ["queries", "transaction"])
def test_gunicorn_preload_workers_lose_no_money_after_the_master_used_twostep(
    bank, bank_coordinator, pg, maria, warmup
):
    master_sessions = bank.directory / "master-sessions.json"
    journal = bank.journal_path("gunicorn")
    app_settings = {
        **settings_for(bank, bank_coordinator, journal, "g"),
        "warmup": warmup,
        "master_sessions": str(master_sessions),
    }
    server = Gunicorn(app_settings)
    try:
        server.wait_booted(20)
        with ThreadPoolExecutor(CLIENTS) as clients:
            answers = dict(
                zip(
                    (f"g-{n}" for n in range(REQUESTS)),
                    clients.map(server.get, (f"/transfer/g-{n}" for n in range(REQUESTS))),
                    strict=True,
                )
            )
        master = json.loads(master_sessions.read_text())
        # The master's pooled sessions are still open on the servers: no worker ended them.
        with pg.admin_connect() as conn:
            backends = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity")}
        admin = maria.admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist")
                sessions = {r[0] for r in cur.fetchall()}
        finally:
            admin.close()
    finally:
        server.stop()
    told_committed = {tid for tid, answer in answers.items() if answer == "200 committed"}
    assert told_committed <= bank.transfer_ids()  # each on both sides
    master_transfer = 1 if warmup == "transaction" else 0
    assert_bank_intact(bank, bank_coordinator, REQUESTS + master_transfer)
    assert told_committed == set(answers), {
        t: a for t, a in answers.items() if t not in told_committed
    }
    assert master["pg"] in backends and master["maria"] in sessions
    assert not _TROUBLE.search(server.output), server.output
