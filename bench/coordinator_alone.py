"""Coordinator mode: what one coordinator process decides per second, with no databases.

For each client thread count, a fresh coordinator process (`--store`: the embedded decision
log, or the PostgreSQL store on a fresh database of a private PostgreSQL server) and that
many threads in this one process, each asking for decisions in a loop the way the client
library does for a transaction with a PostgreSQL and a MariaDB branch (`bench/_internals.py`,
`decide_once`). Reported per thread count:
- decisions/s and the p50 / p99 of one decision (first call to the Ack being queued);
- RPCs per decision: every RPC this process started to the coordinator (gRPC's own channel
  counters, channelz: Describe, probes, Commit, the batched Acks), over the coordinator's life,
  warm-up included, divided by the decisions of that life;
- fsyncs per decision: the decision log's synced commits (a batch with a decision in it;
  batches of Acks alone ride on the next one; PostgreSQL: commits with synchronous_commit
  on) as the coordinator's "coordinator stopped" line reports them, over the same life; log
  rows per commit beside it;
- CPU per decision: the coordinator process's (/proc) and this client process's, over the
  timed run (and the last Acks' drain).
Then the coordinator's resident memory: started and idle, and with `--active` transactions
decided COMMIT and never acknowledged (what it holds for clients that died after the
decision; an undecided transaction costs it nothing: its gtrid is minted by the client).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostep.testing import CoordinatorProcess, PostgresServer

from ._args import counts
from ._env import MY_NAME, PG_NAME, coordinator_counters, cpu_s, machine, resident_mb, rpcs_to
from ._internals import commit_decision, decide_once, mint_gtrid
from ._load import Run, run_threads
from ._report import percentile, table

__all__ = ["add_arguments", "run"]

_ACK_DRAIN_S = 1.0  # the client sends Acks in the background: let the last ones leave


@dataclass(frozen=True)
class DecisionRow:
    threads: int
    run: Run
    decisions: int  # over the coordinator's life: warm-up and the timed run
    rpcs: int
    counters: dict[str, int]
    coordinator_cpu_s: float  # over the timed run and the Acks' drain
    client_cpu_s: float  # this process, over the same span

    def cells(self) -> tuple[object, ...]:
        batches = self.counters.get("log_batches", 0)
        fsyncs = self.counters.get("log_fsyncs", 0)
        items = self.counters.get("log_items", 0)
        return (
            str(self.threads),
            self.run.rate,
            percentile(self.run.latencies_ms, 50),
            percentile(self.run.latencies_ms, 99),
            self.rpcs / self.decisions,
            fsyncs / self.decisions,
            items / batches if batches else float("nan"),
            self.coordinator_cpu_s * 1000 / max(1, sum(self.run.results)),
            self.client_cpu_s * 1000 / max(1, sum(self.run.results)),
            len(self.run.errors),
        )


def measure_decisions(
    base_dir: Path, threads: int, seconds: float, settings: dict[str, Any] | None = None
) -> DecisionRow:
    """`settings`: the coordinator's (the decision log store's), default the embedded log."""
    proc = CoordinatorProcess(base_dir / f"decisions-{threads}", settings=settings).start()
    try:
        address = proc.address
        warm = run_threads(threads, 0.5, lambda worker: decide_once(address, worker + 1))
        client_cpu, coordinator_cpu = time.process_time(), cpu_s(proc.pid)  # type: ignore[arg-type]
        timed = run_threads(threads, seconds, lambda worker: decide_once(address, worker + 1))
        time.sleep(_ACK_DRAIN_S)
        rpcs = rpcs_to(address)
        client_cpu = time.process_time() - client_cpu
        coordinator_cpu = cpu_s(proc.pid) - coordinator_cpu  # type: ignore[arg-type]
    finally:
        proc.stop()
    decisions = max(1, sum(warm.results) + sum(timed.results))  # True for each COMMITTED
    counters = coordinator_counters(proc)
    return DecisionRow(threads, timed, decisions, rpcs, counters, coordinator_cpu, client_cpu)


def measure_memory(
    base_dir: Path, active: int, threads: int, settings: dict[str, Any] | None = None
) -> list[tuple[str, float, float]]:
    proc = CoordinatorProcess(base_dir / "memory", settings=settings).start()
    branches = {PG_NAME: "postgresql", MY_NAME: "mysql"}

    def decide(_: int) -> bool:
        return commit_decision(proc.address, mint_gtrid(proc.address, 600), branches)

    try:
        decide(0)  # channel and server warm
        idle = resident_mb(proc.pid)  # type: ignore[arg-type]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            decided = sum(pool.map(decide, range(active)))
        seconds = time.perf_counter() - started
        time.sleep(_ACK_DRAIN_S)
        loaded = resident_mb(proc.pid)  # type: ignore[arg-type]
    finally:
        proc.stop()
    return [
        ("started, 1 transaction", *idle),
        (f"{decided:,} decided, never acknowledged (at {decided / seconds:,.0f}/s)", *loaded),
    ]


@contextlib.contextmanager
def log_stores(store: str, base_dir: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Coordinator settings for a fresh decision log named `name`, per call: none for the
    embedded store; for "postgresql", a new database on a private server started here."""
    if store == "sqlite":
        yield lambda name: {}
        return
    server = PostgresServer(base_dir / "log-postgresql")
    server.start()
    try:

        def fresh(name: str) -> dict[str, Any]:
            server.create_database(name)
            return postgresql_log(f"postgresql://postgres@127.0.0.1:{server.port}/{name}")

        yield fresh
    finally:
        server.stop()


def postgresql_log(url: str) -> dict[str, Any]:
    """Coordinator settings for the PostgreSQL decision log store at `url`."""
    return {"log_store": "postgresql", "log_database_url": url, "cluster_id": "bench"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 s per thread count")
    parser.add_argument(
        "--threads", type=counts, default=(1, 16, 64), metavar="N,N,...", help="(1,16,64)"
    )
    parser.add_argument("--seconds", type=float, help="timed seconds per thread count (10)")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the decision log: embedded (sqlite) or a private PostgreSQL server (postgresql)",
    )
    parser.add_argument(
        "--active",
        type=int,
        default=10_000,
        help="decided, never acknowledged transactions (memory figure)",
    )


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    with (
        tempfile.TemporaryDirectory(prefix="twostep-bench-coordinator-") as tmp,
        log_stores(args.store, Path(tmp)) as store_settings,
    ):
        rows = [
            measure_decisions(Path(tmp), n, seconds, store_settings(f"decisions_{n}"))
            for n in args.threads
        ]
        memory = measure_memory(Path(tmp), args.active, max(args.threads), store_settings("memory"))
    headers = [
        "client threads",
        "decisions/s",
        "p50 ms",
        "p99 ms",
        "RPCs per decision",
        "fsyncs per decision",
        "log rows per commit",
        "coordinator CPU ms per decision",
        "client CPU ms per decision",
        "errors",
    ]
    print(
        f"Coordinator alone, {args.store} decision log, {machine()}; {seconds:g} s per thread "
        "count, one client process"
    )
    print()
    print(table(headers, [row.cells() for row in rows]))
    print()
    print(table(["coordinator process", "resident MB", "peak resident MB"], memory))
    failed = sum(len(row.run.errors) for row in rows)
    return 1 if failed else 0
