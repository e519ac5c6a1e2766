"""The coordinator's Prometheus metrics, scraped over HTTP from a real coordinator process.

One coordinator with 'orders' (PostgreSQL) and 'billing' (MariaDB) runs what an operator
wants to see counted: a committed and a rolled-back global transaction (the client library),
an orphan (branches prepared by hand, the client gone: recovery decides ABORT), a COMMIT
whose branch PostgreSQL was made to roll back (a heuristic outcome), a COMMIT with a branch
on an unregistered resource (in doubt, blocked), a branch prepared and kept before its
deadline, and a prepared transaction that is not twostep's. /metrics is read with
prometheus-client's own parser until recovery has seen it all, then checked value by value.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from test_heuristics import prepare_by_hand, rollback_prepared_by_hand
from test_recovery import (  # noqa: F401
    ABORTED,
    COMMITTED,
    Client,
    Databases,
    dbs_fixture,
    shop_fixture,
    start_process,
)

from twostep.client import get_connection, global_transaction
from twostep.coordinator._metrics import EXPORTED, PREFIX
from twostep.coordinator.log import (
    LOG_FILE_NAME,
    Ack,
    Begun,
    Proposal,
    SqliteDecisionLog,
    State,
    sqlite_statements,
)
from twostep.testing import CoordinatorProcess
from twostep.v1 import coordinator_pb2 as pb

FOREIGN_GID = "not-twostep-metrics"


@dataclass(frozen=True)
class Scrape:
    """One GET /metrics: every sample as {(name, sorted label pairs): value}."""

    text: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(address: str) -> Scrape:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return Scrape(text, samples)


def scrape_until(address: str, done: Callable[[Scrape], bool], timeout: float = 30) -> Scrape:
    """Scrape until `done` holds for a scrape (which is returned); fail showing the last."""
    give_up = time.monotonic() + timeout
    while not done(last := scrape(address)):
        assert time.monotonic() < give_up, f"not within {timeout} s; /metrics:\n{last.text}"
        time.sleep(0.1)
    return last


@pytest.fixture
def metered(
    coordinator_factory, tmp_path, shop: Databases
) -> Iterator[tuple[CoordinatorProcess, Client]]:
    """A coordinator of 'orders' and 'billing' serving metrics on a free port, and a client of
    it. Recovery passes every 0.2 s and finishes at once."""
    proc = start_process(
        coordinator_factory,
        tmp_path,
        shop,
        "metrics",
        recovery_grace_s=0,
        metrics_listen="127.0.0.1:0",
    )
    client = Client(proc.address)
    yield proc, client
    client.close()


def prepare_foreign(shop: Databases) -> None:
    """A prepared transaction of another user of two-phase commit on the PostgreSQL server."""
    with shop.pg.admin_connect(shop.configs["orders"]["database"]) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (id) VALUES (99)")
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(FOREIGN_GID)))


def test_metrics_count_decisions_recovery_heuristics_and_what_is_prepared(metered, shop):
    proc, client = metered
    address = proc.metrics_address
    before = scrape(address)
    assert before.value("twostep_decisions_total", outcome="commit", reason="") is None
    assert before.value("twostep_commit_seconds_count") == 0

    # A committed and a rolled-back global transaction, through the client library.
    with global_transaction(coordinator=proc.address):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    with pytest.raises(RuntimeError), global_transaction(coordinator=proc.address):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (2)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (2)")  # XA: has a gtrid
        raise RuntimeError("the application changed its mind")
    # An orphan: prepared on both, its client gone, past its deadline.
    orphan = client.begin(timeout_ms=1)
    for name in ("orders", "billing"):
        prepare_by_hand(shop, name, orphan, 3)
    # COMMIT decided for a branch PostgreSQL no longer has prepared: rolled back by hand.
    heuristic = client.begin(timeout_ms=300_000)
    branch = prepare_by_hand(shop, "orders", heuristic, 4)
    rollback_prepared_by_hand(shop, heuristic)
    assert client.commit(heuristic, [branch]).state == COMMITTED
    # COMMIT with a branch on a resource the coordinator does not know: in doubt for good.
    blocked = client.begin(timeout_ms=300_000)
    ghost = pb.Branch(resource="ghost", bqual="ghost", dialect="postgresql")
    assert client.commit(blocked, [ghost]).state == COMMITTED
    # Prepared and kept, before its deadline (its client is between PREPARE and Commit).
    waiting = client.begin(timeout_ms=300_000)
    prepare_by_hand(shop, "orders", waiting, 5)
    prepare_foreign(shop)

    def settled(now: Scrape) -> bool:
        return bool(
            now.value("twostep_recovery_actions_total", action="decide-abort", result="done")
            and now.value("twostep_heuristic_outcomes_total", resource="orders")
            and now.value("twostep_blocked_transactions")
            and now.value("twostep_decisions_total", outcome="abort", reason="client")
            and now.value("twostep_oldest_prepared_branch_age_seconds", resource="orders")
            # A pass scans before it acts: one more, after the orphan's rollbacks.
            and now.value("twostep_prepared_branches", resource="orders") == 1
        )

    after = scrape_until(address, settled)
    assert client.get(orphan).state == ABORTED

    def value(name: str, **labels: str) -> float | None:
        return after.value(name, **labels)

    # Decisions, once each: three Commits (one the client's), the client's Abort, the orphan's.
    assert value("twostep_decisions_total", outcome="commit", reason="") == 3
    assert value("twostep_decisions_total", outcome="abort", reason="client") == 1
    assert value("twostep_decisions_total", outcome="abort", reason="orphan") == 1
    assert value("twostep_commit_seconds_count") == 3
    assert value("twostep_commit_seconds_sum") > 0
    assert value("twostep_commit_seconds_bucket", le="+Inf") == 3
    # Recovery: the orphan's ABORT and its two rollbacks; the gone branch found rolled back.
    assert value("twostep_recovery_actions_total", action="decide-abort", result="done") == 1
    assert value("twostep_recovery_actions_total", action="rollback", result="done") == 2
    assert value("twostep_recovery_actions_total", action="verify", result="heuristic") == 1
    assert value("twostep_heuristic_outcomes_total", resource="orders") == 1
    assert value("twostep_recovery_actions_total", action="commit", result="blocked") >= 1
    # States, in the words of twostep.client.txn_states: the kept branch's transaction is
    # active, the ghost's is committing, in doubt and blocked.
    assert value("twostep_transactions", state="active") == 1
    assert value("twostep_transactions", state="committing") == 1
    assert value("twostep_transactions", state="aborting") == 0
    assert value("twostep_transactions", state="orphaned") == 0
    assert value("twostep_in_doubt_transactions") == 1
    assert value("twostep_blocked_transactions") == 1
    assert value("twostep_recovery_last_pass_timestamp_seconds") > 0
    # Per resource, from the scans.
    assert value("twostep_resource_up", resource="orders") == 1
    assert value("twostep_resource_up", resource="billing") == 1
    assert value("twostep_prepared_branches", resource="orders") == 1
    assert value("twostep_prepared_branches", resource="billing") == 0
    assert value("twostep_oldest_prepared_branch_age_seconds", resource="orders") > 0
    assert value("twostep_oldest_prepared_branch_age_seconds", resource="billing") == 0
    # PostgreSQL, server-wide: the kept branch and the foreign prepared transaction.
    assert value("twostep_pg_max_prepared_transactions", resource="orders") == 64
    assert value("twostep_pg_prepared_transactions", resource="orders") == 2
    assert value("twostep_pg_prepared_transactions_headroom", resource="orders") == 62
    assert value("twostep_pg_oldest_prepared_transaction_age_seconds", resource="orders") > 0
    assert value("twostep_pg_oldest_prepared_xid_age", resource="orders") >= 1
    assert value("twostep_pg_max_prepared_transactions", resource="billing") is None
    # Every name has the prefix, and `EXPORTED` lists exactly what a scrape shows of ours.
    # (prometheus-client adds a `_created` timestamp to each counter and histogram.)
    shown = {n for n in after.names() if not n.endswith("_created")}
    assert shown == set(EXPORTED)
    assert all(n.startswith(PREFIX) for n in EXPORTED)
    # The endpoint is plain HTTP even where the gRPC port is TLS only (README, "Security"):
    # no series names a transaction. Labels are fixed classes and the resources' names.
    labels = {label for _, pairs in after.samples for label, _ in pairs}
    assert labels == {"outcome", "reason", "state", "action", "result", "resource", "le"}
    values = {value for _, pairs in after.samples for _, value in pairs}
    assert not [v for v in values for g in (orphan, heuristic, blocked, waiting) if g in v]
    assert {v for _, pairs in after.samples for k, v in pairs if k == "resource"} <= {
        "orders",
        "billing",
    }


def test_a_coordinator_serves_no_metrics_unless_asked(coordinator):
    assert "metrics=off" in coordinator.start_line
    with pytest.raises(RuntimeError, match="serves no metrics"):
        _ = coordinator.metrics_address


def test_the_counts_each_pass_refreshes_read_only_the_logs_incomplete_rows(tmp_path):
    log = SqliteDecisionLog(tmp_path)
    try:
        log.record_begun([Begun(f"g{i}", i, 10**13) for i in range(3)])
        log.decide([Proposal("g0", commit=True, minted=False, fallback_deadline_ms=10**13)])
        log.record_acks([Ack("g0")])
        log.flush()
        assert log.summary(incomplete_only=True) == {(State.ACTIVE, False): 2}
        assert log.summary() == {(State.ACTIVE, False): 2, (State.COMMITTED, True): 1}
    finally:
        log.close()
    db = sqlite3.connect(tmp_path / LOG_FILE_NAME)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    sqlite_statements.summary(db, incomplete_only=True)
    (query,) = statements
    plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX global_transactions_incomplete" in plan, plan
    db.close()
