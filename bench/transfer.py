"""Benchmark: one cross-database transfer (debit PostgreSQL, credit MariaDB), twostep vs by hand.

    .venv/bin/python bench/transfer.py [--n 1000]

Starts its own throwaway PostgreSQL and MariaDB (twostep.testing) and a coordinator
(embedded log, in a temp dir), then times, in the same run and interleaved in rounds so that
machine noise hits both alike:
- baseline: hand-written 2PC on two persistent sessions: BEGIN / XA START, the two writes,
  PREPARE TRANSACTION + XA END/PREPARE, COMMIT PREPARED + XA COMMIT; no decision log at all;
- twostep: the same writes through `global_transaction()` and the coordinator (which fsyncs
  its decision before phase 2).
Prints p50/p90/p99 per variant and twostep's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from twostep.client import ConnectionManager, get_connection, global_transaction
from twostep.testing import CoordinatorProcess, MariaDBServer, PostgresServer

PG_DDL = [
    "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE transfers (id TEXT PRIMARY KEY, amount INT NOT NULL)",
    "INSERT INTO accounts VALUES (1, 1000000000)",
]
MY_DDL = [
    "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE transfers (id VARCHAR(64) PRIMARY KEY, amount INT NOT NULL) ENGINE=InnoDB",
    "INSERT INTO accounts VALUES (1, 0)",
]
DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = 1"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = 1"
RECORD = "INSERT INTO transfers (id, amount) VALUES (%s, %s)"


def by_hand(pg, my) -> None:
    """The hand-written reference: correct only while nothing crashes."""
    tid = uuid.uuid4().hex
    gid = f"bench_{tid}"
    pg.execute("BEGIN")
    pg.execute(DEBIT, (1,))
    pg.execute(RECORD, (tid, 1))
    with my.cursor() as cur:
        cur.execute("XA START %s", (gid,))
        cur.execute(CREDIT, (1,))
        cur.execute(RECORD, (tid, 1))
        cur.execute("XA END %s", (gid,))
        cur.execute("XA PREPARE %s", (gid,))
    pg.execute(f"PREPARE TRANSACTION '{gid}'")
    pg.execute(f"COMMIT PREPARED '{gid}'")
    with my.cursor() as cur:
        cur.execute("XA COMMIT %s", (gid,))


def with_twostep(address: str) -> None:
    tid = uuid.uuid4().hex
    with global_transaction(coordinator=address, timeout=10):
        orders, billing = get_connection("bank_pg"), get_connection("bank_my")
        orders.execute("UPDATE accounts SET balance = balance - ? WHERE id = 1", (1,))
        orders.execute("INSERT INTO transfers (id, amount) VALUES (?, ?)", (tid, 1))
        billing.execute("UPDATE accounts SET balance = balance + ? WHERE id = 1", (1,))
        billing.execute("INSERT INTO transfers (id, amount) VALUES (?, ?)", (tid, 1))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=100)
    return statistics.median(samples), q[89], q[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="transfers per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="twostep-bench-") as tmp:
        base = Path(tmp)
        (base / "pg").mkdir()
        (base / "my").mkdir()
        pg_server, my_server = PostgresServer(base / "pg"), MariaDBServer(base / "my")
        pg_server.start()
        my_server.start()
        coordinator = CoordinatorProcess(base / "coordinator")
        coordinator.start()
        try:
            run(args.n, pg_server, my_server, coordinator.address)
        finally:
            ConnectionManager.close_all()
            coordinator.stop()
            pg_server.stop()
            my_server.stop()


def run(n: int, pg_server, my_server, address: str) -> None:
    pg_server.create_database("bench")
    my_server.create_database("bench")
    ConnectionManager.configure("bank_pg", pg_server.config("bench"))
    ConnectionManager.configure("bank_my", my_server.config("bench"))
    for ddl in PG_DDL:
        get_connection("bank_pg").execute(ddl)
    for ddl in MY_DDL:
        get_connection("bank_my").execute(ddl)
    pg = pg_server.admin_connect("bench")
    my = my_server.admin_connect("bench")
    samples: dict[str, list[float]] = {"hand-written 2PC": [], "twostep": []}
    variants = {
        "hand-written 2PC": lambda: by_hand(pg, my),
        "twostep": lambda: with_twostep(address),
    }
    for fn in variants.values():  # warm up connections, pools and the coordinator channel
        for _ in range(20):
            fn()
    rounds = 10
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(n // rounds):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    base_p50 = percentiles(samples["hand-written 2PC"])[0]
    print(f"{'variant':<18} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for name, values in samples.items():
        p50, p90, p99 = percentiles(values)
        print(
            f"{name:<18} {len(values):>5} {p50 * 1e3:>8.2f} {p90 * 1e3:>8.2f} {p99 * 1e3:>8.2f}"
            f" {p50 / base_p50:>9.2f}x"
        )
    with pg.cursor() as cur:
        cur.execute("SELECT balance FROM accounts WHERE id = 1")
        pg_balance = cur.fetchone()[0]
    with my.cursor() as cur:
        cur.execute("SELECT balance FROM accounts WHERE id = 1")
        my_balance = cur.fetchone()[0]
    assert pg_balance + my_balance == 1000000000, "money was not conserved"
    pg.close()
    my.close()


if __name__ == "__main__":
    main()
