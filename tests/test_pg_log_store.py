"""The PostgreSQL decision log store (coordinator/log/postgresql.py) on the throwaway server.

It must answer exactly like the embedded store (the same rules, `log/interface.py`), keep one
decision per gtrid between several stores on one database (replicas), batch concurrent
decisions into one PostgreSQL transaction, split recovery's work between stores, and survive a
broken connection.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from twostep.client.tpc import new_gtrid
from twostep.coordinator import (
    Ack,
    Begun,
    BranchRecord,
    ConfigError,
    ListQuery,
    LogUnavailable,
    Note,
    PostgresDecisionLog,
    Proposal,
    Resolution,
    SqliteDecisionLog,
    State,
    load_settings,
)
from twostep.coordinator.log import LogBusy
from twostep.testing import FakeClock, PostgresServer

CLUSTER = "pgstore"
BRANCHES = (
    BranchRecord("orders", "orders", "postgresql", transaction_id=7),
    BranchRecord("billing", "billing#12", "mysql", session_id=12),
)


def conninfo(config: dict[str, Any]) -> str:
    """A libpq connection string for a test database's client config (no password)."""
    return psycopg.conninfo.make_conninfo(
        host=config["host"], port=config["port"], dbname=config["database"], user=config["username"]
    )


@pytest.fixture
def log_database(pg_server: PostgresServer) -> Iterator[str]:
    """The conninfo of a new, empty database for a decision log, dropped afterwards."""
    name = f"log_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield conninfo(pg_server.config(name))
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def open_store(log_database: str) -> Iterator[Callable[..., PostgresDecisionLog]]:
    """Opens PostgreSQL stores on the test's log database; all are closed at teardown."""
    opened: list[PostgresDecisionLog] = []

    def open_(**kwargs: Any) -> PostgresDecisionLog:
        store = PostgresDecisionLog(log_database, **{"cluster_id": CLUSTER, **kwargs})
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def gtrids(count: int, clock: FakeClock, lifetime_s: int = 60, kind: str = "ts1") -> list[str]:
    made = [new_gtrid(CLUSTER, clock.ms // 1000 + lifetime_s) for _ in range(count)]
    return [g.replace("ts1.", f"{kind}.", 1) for g in made]


# -- the same rules as the embedded store ------------------------------------------------------


def random_script(seed: int, clock: FakeClock) -> list[tuple[str, Any]]:
    """A seeded mix of every operation of the log, over a few gtrids of both kinds."""
    rng = random.Random(seed)
    begun = gtrids(12, clock, lifetime_s=5)
    minted = gtrids(6, clock, lifetime_s=5, kind="ts2")
    script: list[tuple[str, Any]] = [
        ("begin", [Begun(g, clock.ms, clock.ms + 3_000) for g in begun])
    ]
    for _ in range(120):
        gtrid = rng.choice(begun + minted)
        deadline = clock.ms + 4_000
        op = rng.choice(["commit", "commit", "abort", "ack", "ack1", "resolve", "note", "tick"])
        # As from the wire (presumed abort without a row when unknown and late), or not.
        wire = rng.random() < 0.5
        own_deadline = clock.ms + rng.choice([-1_000, 4_000]) if wire else deadline
        if op == "commit":
            branches = BRANCHES[: rng.randint(0, 2)]
            minted_ = gtrid.startswith("ts2")
            proposal = Proposal(gtrid, True, branches, "", own_deadline, minted_, wire)
            script.append(("decide", [proposal]))
        elif op == "abort":
            reason = rng.choice(["", "x"])
            proposal = Proposal(gtrid, False, BRANCHES[:1], reason, own_deadline, False, wire)
            script.append(("decide", [proposal]))
        elif op in ("ack", "ack1"):
            script.append(("acks", [Ack(gtrid, one_phase_commit=op == "ack1")]))
        elif op == "resolve":
            commit, force = rng.random() < 0.5, rng.random() < 0.5
            script.append(("resolve", Resolution(gtrid, commit, "ops", force, BRANCHES, deadline)))
        elif op == "note":
            script.append(("notes", [Note(gtrid, 0, "heuristic", f"note {rng.random()}")]))
        else:
            script.append(("tick", rng.choice([500, 1_500, 4_000])))
    script.append(("prune", None))
    return script


def play(store: Any, clock: FakeClock, script: list[tuple[str, Any]]) -> list[Any]:
    answers: list[Any] = []
    for op, arg in script:
        if op == "begin":
            store.record_begun(arg)
        elif op == "decide":
            answers.append(store.decide(arg))
        elif op == "acks":
            store.record_acks(arg)
        elif op == "resolve":
            answers.append(store.resolve(arg))
        elif op == "notes":
            store.add_notes(arg)
        elif op == "tick":
            clock.advance(arg)
        elif op == "prune":
            answers.append(store.prune(clock.ms - 2_000, 1000))
        store.flush()  # the order of queued writes is the script's, in both stores
    rows = store.list_transactions(ListQuery(limit=10_000))
    answers.append(sorted(rows, key=lambda r: r.gtrid))
    answers.append({r.gtrid: store.notes(r.gtrid) for r in rows})
    answers.append(store.summary())
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_postgresql_store_answers_every_operation_like_the_embedded_store(
    open_store, tmp_path: Path, seed: int
):
    script = random_script(seed, FakeClock())
    start = FakeClock()
    pg_clock, sqlite_clock = FakeClock(), FakeClock()
    pg_clock.ms = sqlite_clock.ms = start.ms
    embedded = SqliteDecisionLog(tmp_path, clock=sqlite_clock)
    try:
        expected = play(embedded, sqlite_clock, script)
    finally:
        embedded.close()
    assert play(open_store(clock=pg_clock), pg_clock, script) == expected


# -- replicas ----------------------------------------------------------------------------------


def test_two_stores_on_one_database_take_one_decision_per_gtrid(open_store):
    first, second = open_store(), open_store()
    clock = FakeClock()
    ids = gtrids(40, clock)
    first.record_begun([Begun(g, clock.ms, clock.ms + 60_000) for g in ids])
    first.flush()

    def decide(args: tuple[PostgresDecisionLog, str, bool]) -> tuple[str, State]:
        store, gtrid, commit = args
        (decision,) = store.decide([Proposal(gtrid, commit, reason="racing")])
        return gtrid, decision.state

    work = [(store, g, store is first) for g in ids for store in (first, second) * 4]
    random.Random(5).shuffle(work)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(decide, work))
    outcomes = set()
    for gtrid in ids:
        seen = {state for g, state in answers if g == gtrid}
        assert len(seen) == 1, (gtrid, seen)
        record = second.get(gtrid)
        assert record is not None and {record.state} == seen
        outcomes |= seen
    assert outcomes == {State.COMMITTED, State.ABORTED}  # the race went both ways


def test_a_log_database_of_another_cluster_is_refused(open_store):
    open_store()
    with pytest.raises(LogUnavailable, match="belongs to cluster 'pgstore'"):
        open_store(cluster_id="another")


def test_recovery_work_one_store_holds_is_not_given_to_another(open_store):
    first, second = open_store(), open_store()
    a, b, c = gtrids(3, FakeClock())
    with first.take_work([a, b]) as mine:
        assert mine == {a, b}
        with second.take_work([a, b, c]) as theirs:
            assert theirs == {c}  # a and b are held by the first
    with second.take_work([a, b]) as theirs:
        assert theirs == {a, b}  # released at the end of the first block


# -- group commit ------------------------------------------------------------------------------


def test_concurrent_decisions_share_one_postgresql_transaction(open_store, log_database: str):
    store = open_store()
    clock = FakeClock()
    ids = gtrids(100, clock)
    store.record_begun([Begun(g, clock.ms, clock.ms + 60_000) for g in ids])
    store.flush()
    before = store.stats()
    # A stalled server: the decisions queue up behind a lock, as they would behind a WAL flush.
    with psycopg.connect(log_database, autocommit=True) as outsider:
        outsider.execute("BEGIN")
        outsider.execute("LOCK TABLE twostep.global_transactions IN EXCLUSIVE MODE")
        with ThreadPoolExecutor(100) as pool:
            answers = [pool.submit(store.decide, [Proposal(g, True)]) for g in ids]
            deadline = time.monotonic() + 10
            while store.stats().requests - before.requests < 100:
                assert time.monotonic() < deadline, "the decisions did not all arrive"
                time.sleep(0.01)
            outsider.execute("ROLLBACK")
            assert {a.result(timeout=30)[0].state for a in answers} == {State.COMMITTED}
    after = store.stats()
    assert after.items - before.items == 100
    assert after.batches - before.batches <= 2  # the one stuck behind the lock, then the rest
    assert after.fsyncs - before.fsyncs == after.batches - before.batches


def test_only_begins_and_acks_commit_without_waiting_for_the_wal_flush(open_store):
    store = open_store()
    clock = FakeClock()
    ids = gtrids(3, clock)
    store.record_begun([Begun(g, clock.ms, clock.ms + 60_000) for g in ids])
    store.record_acks([Ack(ids[0], one_phase_commit=True)])
    wait_for_items(store, 4)
    alone = store.stats()
    assert alone.batches >= 1 and alone.fsyncs == 0
    store.decide([Proposal(ids[1], commit=True)])
    assert store.stats().fsyncs == 1
    assert store.get(ids[0]).state is State.COMMITTED  # type: ignore[union-attr]


def test_a_flood_behind_a_stalled_server_is_refused_and_the_queue_stays_bounded(
    open_store, log_database: str
):
    # max_batch 10: the queue takes 200 rows (20 batches) of the wire's requests, Begins and
    # Acks an eighth of that.
    store = open_store(max_batch=10)
    clock = FakeClock()
    with psycopg.connect(log_database, autocommit=True) as outsider:
        outsider.execute("BEGIN")
        outsider.execute("LOCK TABLE twostep.global_transactions IN EXCLUSIVE MODE")
        try:
            store.record_begun([Begun(g, clock.ms, clock.ms + 60_000) for g in gtrids(50, clock)])
            # Until the writer has taken it, the first request is still counted as queued, and
            # what the test then expects to be refused could be taken by the emptied queue.
            wait_for_a_writer_blocked_on(outsider, "twostep.global_transactions")
            taken = 1
            for _ in range(19):
                with contextlib.suppress(LogBusy):
                    store.record_begun(
                        [Begun(g, clock.ms, clock.ms + 60_000) for g in gtrids(50, clock)]
                    )
                    taken += 1
            # One request in the writer's hands, one queued behind it: the rest were refused.
            assert taken == 2
            with pytest.raises(LogBusy):
                store.record_acks([Ack(g) for g in gtrids(50, clock)])
            with pytest.raises(LogBusy):  # a decision may use the whole queue, not more
                store.decide([Proposal(g, True) for g in gtrids(200, clock)])
        finally:
            outsider.execute("ROLLBACK")
    store.flush()
    assert sum(store.summary().values()) == 50 * taken
    (decision,) = store.decide([Proposal(gtrids(1, clock)[0], True)])  # served again
    assert decision.state is State.ABORTED


def wait_for_a_writer_blocked_on(outsider: psycopg.Connection, table: str) -> None:
    """Return once a backend waits for the lock `outsider` holds on `table` (pg_locks is read
    live, unlike pg_stat_activity, whose snapshot lasts the outsider's transaction)."""
    deadline = time.monotonic() + 10
    waiting = "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
    while outsider.execute(waiting, (table,)).fetchone() is None:
        assert time.monotonic() < deadline, "the writer did not reach the locked table"
        time.sleep(0.01)


def wait_for_items(store: PostgresDecisionLog, items: int) -> None:
    deadline = time.monotonic() + 10
    while store.stats().items < items:
        assert time.monotonic() < deadline, "the writes were not made"
        time.sleep(0.01)


# -- failures ----------------------------------------------------------------------------------


def test_a_batch_whose_connection_broke_is_unavailable_and_the_next_one_reconnects(
    open_store, log_database: str
):
    store = open_store()
    clock = FakeClock()
    first, second = gtrids(2, clock)
    store.decide([Proposal(first, commit=False)])
    with psycopg.connect(log_database, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'twostep-coordinator' AND datname = current_database()"
        )
    with pytest.raises(LogUnavailable):  # the writer finds its session gone: nothing written
        store.decide([Proposal(second, commit=False)])
    assert store.get(second) is None
    assert store.decide([Proposal(second, commit=False)])[0].state is State.ABORTED
    assert store.get(second).state is State.ABORTED  # type: ignore[union-attr]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TWOSTEP_LOG_STORE": "postgresql", "TWOSTEP_CLUSTER_ID": "c1"}, "needs log_database_url"),
        (
            {"TWOSTEP_LOG_STORE": "postgresql", "TWOSTEP_LOG_DATABASE_URL": "postgresql://h/db"},
            "needs cluster_id",
        ),
        ({"TWOSTEP_LOG_DATABASE_URL": "postgresql://h/db"}, "is for log_store = postgresql"),
        ({"TWOSTEP_LOG_DATABASE_URL": "postgresql://u:s3cret@h/db"}, "not in the URL"),
        ({"TWOSTEP_LOG_DATABASE_URL": "postgresql:///db"}, "names no host"),
        ({"TWOSTEP_LOG_STORE": "mysql"}, "expected sqlite or postgresql"),
    ],
)
def test_log_store_settings_are_refused_unless_they_fit_together(environ, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_settings([], environ)
    assert "s3cret" not in str(refused.value)


def test_replica_settings_from_the_environment_name_the_shared_log():
    settings = load_settings(
        [],
        {
            "TWOSTEP_LOG_STORE": "postgresql",
            "TWOSTEP_LOG_DATABASE_URL": "postgresql://twostep@db:5432/log",
            "TWOSTEP_LOG_DATABASE_PASSWORD": "pw",
            "TWOSTEP_CLUSTER_ID": "shop",
        },
    )
    assert (settings.log_store, settings.log_database_url) == (
        "postgresql",
        "postgresql://twostep@db:5432/log",
    )
    assert "pw" not in repr(settings)
