"""Recovery mode: prepared branches left by dead clients, finished after a coordinator restart.

`--branches` (10,000) prepared branches, two per transaction (one on PostgreSQL, one on
MariaDB), as dead transfers leave them. Setup: a coordinator with both databases registered
is described and the gtrids are minted from it (as a client mints them; its recovery loop
idle meanwhile), each transaction's branches are prepared (PostgreSQL: many per session,
since PREPARE frees it; MariaDB: one session per branch, closed after XA PREPARE, as a dead
client's), and the coordinator is killed (SIGKILL). Then it is restarted with its default
settings (`--setting KEY=VALUE` changes one, e.g. `recovery_interval_s=1`) and timed:
- `orphans`: the clients died before Commit and their deadline has passed; recovery aborts
  each (the ABORT durable first, then ROLLBACK PREPARED / XA ROLLBACK) once two scans a
  recovery interval apart listed it;
- `decided`: the clients died right after a COMMIT decision; recovery commits the branches
  once `recovery_grace_s` has passed since the decision (the setup waits it out before the
  restart, so the time is recovery's own).
Reported: setup time, time from the restart to the coordinator's start line, and to nothing
left prepared on either database (polled every 0.2 s), and the rows left afterwards
(orphans: none; decided: one per transaction on each side).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostep.client import Connection
from twostep.testing import CoordinatorProcess

from ._args import key_value
from ._env import MY_NAME, PG_NAME, machine, private_servers
from ._internals import commit_decision, mint_gtrid, prepare_branch
from ._report import table
from .variants import my_connect, pg_connect

__all__ = ["Result", "add_arguments", "measure", "run"]

_SETUP_WORKERS = 8  # client threads that prepare branches
_POLL_S = 0.2
_GIVE_UP_S = 600.0
_DEFAULT_GRACE_S = 10.0  # the coordinator's recovery_grace_s unless --setting changes it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1,000 branches")
    parser.add_argument("--branches", type=int, help="prepared branches in all (10,000)")
    parser.add_argument(
        "--case", choices=("orphans", "decided", "both"), default="orphans", help="(orphans)"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="a [coordinator] setting for the restarted coordinator (seconds as numbers)",
    )


def run(args: argparse.Namespace) -> int:
    branches = args.branches or (1_000 if args.quick else 10_000)
    transactions = max(1, branches // 2)
    settings = dict(args.setting)
    cases = ("orphans", "decided") if args.case == "both" else (args.case,)
    pg_settings = {"max_prepared_transactions": transactions + 64, "max_connections": 200}
    with private_servers(pg_settings, {"max_connections": 400}) as servers:
        results = [
            measure(
                servers.pg_config,
                servers.maria_config,
                servers.base_dir / f"coordinator-{case}",
                case,
                transactions,
                settings,
            )
            for case in cases
        ]
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    print(f"Recovery after a coordinator restart, {machine()}; coordinator settings: {shown}")
    print()
    print(table(Result.headers, [r.cells() for r in results]))
    return 0 if all(r.ok for r in results) else 1


@dataclass(frozen=True)
class Result:
    case: str
    transactions: int
    setup_s: float
    up_s: float  # restart to the start line
    done_s: float  # restart to nothing prepared (or to giving up)
    left: int  # branches still prepared at the end
    rows: tuple[int, int]  # rows of `t` on PostgreSQL, MariaDB

    headers = (
        "case",
        "prepared branches",
        "setup s",
        "restart to start line s",
        "restart to none prepared s",
        "rows left PG / MariaDB",
    )

    @property
    def ok(self) -> bool:
        expected = self.transactions if self.case == "decided" else 0
        return self.left == 0 and self.rows == (expected, expected)

    def cells(self) -> tuple[object, ...]:
        finished = self.done_s if self.left == 0 else f"gave up, {self.left} left"
        rows = f"{self.rows[0]:,} / {self.rows[1]:,}"
        return (self.case, 2 * self.transactions, self.setup_s, self.up_s, finished, rows)


def measure(
    pg_config: Mapping[str, Any],
    my_config: Mapping[str, Any],
    data_dir: Path,
    case: str,
    transactions: int,
    settings: Mapping[str, Any],
) -> Result:
    """Leave `transactions` transactions' branches prepared in the (empty) databases of
    `pg_config` / `my_config` as `case` says, restart the coordinator on `data_dir` and time
    its recovery. PostgreSQL needs `max_prepared_transactions` >= `transactions`."""
    _reset_tables(pg_config, my_config)
    resources = {PG_NAME: pg_config, MY_NAME: my_config}
    # The setup's coordinator runs no recovery pass but the one at its start (an hour apart).
    proc = CoordinatorProcess(
        data_dir,
        env={"TWOSTEP_RECOVERY_INTERVAL": "3600"},
        resources=resources,
        settings=settings,
    )
    started = time.perf_counter()
    proc.start()
    try:
        timeout_s = 1.0 if case == "orphans" else 600.0
        with ThreadPoolExecutor(_SETUP_WORKERS) as pool:
            minted = pool.map(lambda _: mint_gtrid(proc.address, timeout_s), range(transactions))
            gtrids = list(minted)
        _progress(f"{case}: {transactions:,} gtrids minted", started)
        _prepare_all(pg_config, my_config, gtrids)
        _progress(f"{case}: {2 * transactions:,} branches prepared", started)
        if case == "decided":
            branches = {PG_NAME: "postgresql", MY_NAME: "mysql"}
            with ThreadPoolExecutor(_SETUP_WORKERS) as pool:
                decide = pool.map(lambda g: commit_decision(proc.address, g, branches), gtrids)
                decided = list(decide)
            if not all(decided):
                raise RuntimeError(f"{decided.count(False)} transactions were not decided COMMIT")
        proc.kill()
        setup_s = time.perf_counter() - started
        if case == "decided":  # recovery leaves a fresh decision to its client for the grace
            time.sleep(float(settings.get("recovery_grace_s", _DEFAULT_GRACE_S)))
        cluster = proc.cluster_id
        left = _prepared_count(pg_config, my_config, cluster)
        restarted = time.perf_counter()
        proc.restart(env={})
        up_s = time.perf_counter() - restarted
        while left and time.perf_counter() - restarted < _GIVE_UP_S:
            time.sleep(_POLL_S)
            left = _prepared_count(pg_config, my_config, cluster)
        done_s = time.perf_counter() - restarted
    finally:
        proc.close()
    rows = _row_counts(pg_config, my_config)
    return Result(case, transactions, setup_s, up_s, done_s, left, rows)


def _progress(what: str, since: float) -> None:
    print(f"{what} ({time.perf_counter() - since:.1f} s)", file=sys.stderr, flush=True)


def _reset_tables(pg_config: Mapping[str, Any], my_config: Mapping[str, Any]) -> None:
    with pg_connect(pg_config) as pg:
        pg.execute("DROP TABLE IF EXISTS t")
        pg.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    with contextlib.closing(my_connect(my_config)) as my, my.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t")
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")


def _prepare_all(
    pg_config: Mapping[str, Any], my_config: Mapping[str, Any], gtrids: Sequence[str]
) -> None:
    """Each gtrid's branch on both databases prepared, held by no live session."""
    pg = Connection.from_config(PG_NAME, pg_config)
    my = Connection.from_config(MY_NAME, my_config)
    insert = "INSERT INTO t (id) VALUES (?)"

    def pg_share(worker: int) -> None:
        session = pg.connect()  # PREPARE TRANSACTION frees the session for the next one
        try:
            for i in range(worker, len(gtrids), _SETUP_WORKERS):
                prepare_branch(pg, session, gtrids[i], insert, (i,))
        finally:
            pg.dialect.close(session)

    def my_one(i: int) -> None:
        session = my.connect()  # a MariaDB branch stays attached to its session until it ends
        try:
            prepare_branch(my, session, gtrids[i], insert, (i,))
        finally:
            my.dialect.close(session)

    with ThreadPoolExecutor(_SETUP_WORKERS) as pool:
        _all(pool.map(pg_share, range(_SETUP_WORKERS)))
        _all(pool.map(my_one, range(len(gtrids))))


def _all(results: Any) -> None:
    for _ in results:  # raises the first worker's exception
        pass


def _prepared_count(
    pg_config: Mapping[str, Any], my_config: Mapping[str, Any], cluster: str
) -> int:
    """Prepared branches of the coordinator's cluster: PostgreSQL's in the database, MariaDB's
    (listed server-wide) whose gtrid names the cluster."""
    with pg_connect(pg_config) as pg:
        query = "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        (pg_count,) = pg.execute(query).fetchone()  # type: ignore[misc]
    with contextlib.closing(my_connect(my_config)) as my, my.cursor() as cur:
        cur.execute("XA RECOVER")
        mark = cluster.encode()
        my_count = sum(1 for _, length, _, data in cur.fetchall() if mark in data[:length])
    return int(pg_count) + my_count


def _row_counts(pg_config: Mapping[str, Any], my_config: Mapping[str, Any]) -> tuple[int, int]:
    with pg_connect(pg_config) as pg:
        (pg_rows,) = pg.execute("SELECT count(*) FROM t").fetchone()  # type: ignore[misc]
    with contextlib.closing(my_connect(my_config)) as my, my.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        (my_rows,) = cur.fetchone()
    return int(pg_rows), int(my_rows)
