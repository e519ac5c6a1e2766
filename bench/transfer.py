"""Transfer mode: one bank transfer across PostgreSQL and MariaDB, four ways, same run.

A transfer debits a random account of 1,000 on PostgreSQL, credits a random account on
MariaDB and writes its transfer id (a row in `transfers`) on both sides. The variants:
- `local`: two local transactions committed one after the other (BEGIN ... COMMIT on each
  database): not atomic, the floor of what two databases cost;
- `hand-2pc`: hand-written sequential two-phase commit on persistent sessions (one pair per
  client thread): BEGIN / XA START, the writes, XA END + XA PREPARE, PREPARE TRANSACTION,
  COMMIT PREPARED, XA COMMIT; no decision log, so correct only while nothing crashes;
- `sqlalchemy`: a SQLAlchemy `Session(twophase=True)` over two engines (its pools hold
  `pool_size` sessions each); no decision log either;
- `twostep`: `global_transaction()` through the public API (`ConnectionManager.configure`,
  `get_connection(...).execute`), with a coordinator process (embedded log, fsynced decisions)
  that has both databases registered as resources, as deployed.

Rounds are interleaved: each round runs every variant for `slice_s` seconds at each client
count in turn (the variants' order rotating), so machine noise hits all of them alike; the
figures are over all rounds (txn/s: transfers / seconds; p50, p99: of each transfer's
latency). Afterwards the money is checked: the sum of all balances is unchanged, and every
transfer a client saw committed has its row on both databases (for the atomic variants, no
row on one side only).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twostep.testing import CoordinatorProcess

from ._args import counts, key_value
from ._env import Servers, cpu_s, machine, private_servers, server_cpu_s
from ._load import Run, run_threads
from ._report import percentile, table
from .variants import (
    ATOMIC,
    LABELS,
    SHORT,
    VARIANTS,
    Transfer,
    make_variants,
    my_connect,
    pg_connect,
)

__all__ = ["QUICK", "VARIANTS", "Options", "Report", "measure"]

OPENING_BALANCE = 1_000_000
#: Server settings for 64 clients per variant: every variant keeps its sessions open (up to
#: 4 x 64 per server, plus the coordinator's and the checks'), and up to 64 branches are
#: prepared at once on PostgreSQL (the throwaway server's defaults: 200 / 151, 64).
PG_SETTINGS = {"max_connections": 400, "max_prepared_transactions": 256}
MARIA_SETTINGS = {"max_connections": 400}

_SCHEMA = [
    "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE transfers (id VARCHAR(32) PRIMARY KEY, variant VARCHAR(16) NOT NULL,"
    " amount INT NOT NULL)",
]


@dataclass(frozen=True)
class Options:
    threads: tuple[int, ...] = (1, 8, 32, 64)
    rounds: int = 3
    slice_s: float = 5.0
    warmup_s: float = 1.0  # per variant at the highest client count, before round 1
    accounts: int = 1000
    variants: tuple[str, ...] = VARIANTS
    #: Sessions each variant may keep per database (SQLAlchemy's `pool_size`, twostep's
    #: `pool_size`); None: the highest client count; 0: each library's default.
    pool_size: int | None = None
    #: More keys for twostep's connection configs (e.g. a new pool setting).
    twostep_config: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 10.0  # twostep's global_transaction(timeout=...)


QUICK = {"rounds": 1, "slice_s": 2.0, "warmup_s": 0.5}


# -- running ------------------------------------------------------------------------------------


@dataclass
class Report:
    """What `measure` found: per (variant, clients) the timed slices of every round, and the
    money checks (each a line; `ok` False if an atomic variant broke one), and the CPU each
    process used (when `measure` was given probes)."""

    options: Options
    slices: dict[tuple[str, int], list[Run]]
    checks: list[str]
    ok: bool
    caption: str = ""
    #: Per (variant, clients): CPU seconds each measured process used during its slices.
    cpu: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, int, float, float, float, str, int]]:
        out = []
        for clients in self.options.threads:
            for variant in self.options.variants:
                done = self.slices.get((variant, clients), [])
                latencies = [ms for s in done for ms in s.latencies_ms]
                rate = self.rate(variant, clients)
                spread = f"{min(s.rate for s in done):,.0f}-{max(s.rate for s in done):,.0f}"
                errors = sum(len(s.errors) for s in done)
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                out.append((LABELS[variant], clients, rate, p50, p99, spread, errors))
        return out

    def rate(self, variant: str, clients: int) -> float:
        done = self.slices.get((variant, clients), [])
        seconds = sum(s.elapsed_s for s in done)
        return sum(len(s.latencies_ms) for s in done) / seconds if seconds else 0.0

    def render(self) -> str:
        headers = ["variant", "clients", "txn/s", "p50 ms", "p99 ms", "txn/s per round", "errors"]
        parts = [self.caption, "", table(headers, self.rows())]
        if "twostep" in self.options.variants:
            baselines = [v for v in self.options.variants if v != "twostep"]
            ratio_rows = []
            for clients in self.options.threads:
                mine = self.rate("twostep", clients)
                ratios = [
                    mine / r if (r := self.rate(v, clients)) else float("nan") for v in baselines
                ]
                ratio_rows.append((str(clients), mine, *ratios))
            headers = ["clients", "twostep txn/s", *(f"twostep / {SHORT[v]}" for v in baselines)]
            parts += ["", table(headers, ratio_rows)]
        if self.cpu:
            parts += ["", self.cpu_table()]
        errors = [
            f"- {LABELS[v]}, {c} clients: {e}"
            for (v, c), done in self.slices.items()
            for e in sorted({e for s in done for e in s.errors})[:3]
        ]
        if errors:
            parts += ["", "Errors (first kinds):", *errors]
        parts += ["", "Money:", *(f"- {line}" for line in self.checks)]
        return "\n".join(parts)

    def cpu_table(self) -> str:
        """CPU ms per committed transfer, by process: where each variant's cost goes."""
        names = list(next(iter(self.cpu.values())))
        rows = []
        for clients in self.options.threads:
            for variant in self.options.variants:
                spent = self.cpu.get((variant, clients))
                done = sum(len(s.latencies_ms) for s in self.slices.get((variant, clients), []))
                if not spent or not done:
                    continue
                per = [spent[n] * 1000 / done for n in names]
                rows.append((LABELS[variant], clients, *per, sum(per)))
        headers = ["variant", "clients", *(f"{n} CPU ms" for n in names), "total CPU ms"]
        return "CPU per transfer, by process (ms):\n\n" + table(headers, rows)


Progress = Callable[[str], None]
#: Named readings of CPU seconds used so far (a process, or a server and its children).
CpuProbes = Mapping[str, Callable[[], float]]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def measure(
    options: Options,
    pg_config: Mapping[str, Any],
    my_config: Mapping[str, Any],
    coordinator: CoordinatorProcess,
    progress: Progress = _to_stderr,
    cpu_probes: CpuProbes | None = None,
) -> Report:
    """Set up the accounts in the (empty) databases of `pg_config` / `my_config`, run the
    interleaved rounds and check the money. `coordinator` has both databases registered
    under the names `bench_pg` / `bench_my` (it finishes what a failed twostep transfer left).
    `cpu_probes`: read before and after every slice, summed per variant and client count.
    """
    probes = cpu_probes or {}
    _create_accounts(pg_config, my_config, options.accounts)
    most = max(options.threads)
    variants = make_variants(
        options.variants,
        pg_config,
        my_config,
        pool=most if options.pool_size is None else options.pool_size,
        twostep_config=options.twostep_config,
        coordinator=coordinator.address,
        timeout_s=options.timeout_s,
    )
    committed: dict[str, list[str]] = {name: [] for name in variants}
    slices: dict[tuple[str, int], list[Run]] = {}
    cpu: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for name, variant in variants.items():  # sessions and pools filled, not timed
            variant.open(most)
            _run_slice(variant, name, most, options.warmup_s, options.accounts, committed[name])
        order = list(variants)
        for round_no in range(options.rounds):
            for clients in options.threads:
                for name in order:
                    before = {n: read() for n, read in probes.items()}
                    result = _run_slice(
                        variants[name],
                        name,
                        clients,
                        options.slice_s,
                        options.accounts,
                        committed[name],
                    )
                    slices.setdefault((name, clients), []).append(result)
                    spent = cpu.setdefault((name, clients), dict.fromkeys(probes, 0.0))
                    for n, read in probes.items():
                        spent[n] += read() - before[n]
                    progress(
                        f"round {round_no + 1}/{options.rounds}, {clients:>2} clients: "
                        f"{LABELS[name]:<27} {result.rate:8.0f} txn/s"
                        + (f" ({len(result.errors)} errors)" if result.errors else "")
                    )
                order = order[1:] + order[:1]  # no variant always runs first or last
    finally:
        for variant in variants.values():
            variant.close()
    if any(s.errors for (name, _), done in slices.items() if name == "twostep" for s in done):
        coordinator.settle(timeout=60)  # what a failed transfer left prepared
    checks, ok = _check_money(pg_config, my_config, options.accounts, committed)
    return Report(options, slices, checks, ok, cpu=cpu)


def _create_accounts(pg_config: Mapping[str, Any], my_config: Mapping[str, Any], n: int) -> None:
    rows = [(i, OPENING_BALANCE) for i in range(1, n + 1)]
    with pg_connect(pg_config) as pg:
        for statement in _SCHEMA:
            pg.execute(statement)
        with pg.cursor() as cur:
            cur.executemany("INSERT INTO accounts (id, balance) VALUES (%s, %s)", rows)
    with contextlib.closing(my_connect(my_config)) as my, my.cursor() as cur:
        for statement in _SCHEMA:
            cur.execute(statement + " ENGINE=InnoDB")
        cur.executemany("INSERT INTO accounts (id, balance) VALUES (%s, %s)", rows)


def _run_slice(
    variant: Any, name: str, clients: int, seconds: float, accounts: int, committed: list[str]
) -> Run:
    """`clients` threads run transfers for `seconds`; the ids of those that committed are
    appended to `committed`."""
    rngs = [random.Random() for _ in range(clients)]

    def one(worker: int) -> str:
        rng = rngs[worker]
        t = Transfer(
            uuid.uuid4().hex,
            name,
            rng.randint(1, accounts),
            rng.randint(1, accounts),
            rng.randint(1, 100),
        )
        variant.transfer(worker, t)
        return t.tid

    run = run_threads(clients, seconds, one)
    committed.extend(run.results)
    return run


def _check_money(
    pg_config: Mapping[str, Any],
    my_config: Mapping[str, Any],
    accounts: int,
    committed: Mapping[str, Sequence[str]],
) -> tuple[list[str], bool]:
    """The sum of all balances is unchanged; every committed transfer has its row on both
    sides, and no atomic variant left a row on one side only."""
    with pg_connect(pg_config) as pg:
        (pg_sum,) = pg.execute("SELECT sum(balance) FROM accounts").fetchone()  # type: ignore[misc]
        pg_rows = pg.execute("SELECT variant, id FROM transfers").fetchall()
        (prepared,) = pg.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()  # type: ignore[misc]
    with contextlib.closing(my_connect(my_config)) as my, my.cursor() as cur:
        cur.execute("SELECT sum(balance) FROM accounts")
        (my_sum,) = cur.fetchone()
        cur.execute("SELECT variant, id FROM transfers")
        my_rows = cur.fetchall()
        cur.execute("XA RECOVER")
        prepared += len(cur.fetchall())
    expected = 2 * accounts * OPENING_BALANCE
    total = int(pg_sum) + int(my_sum)
    lines = [
        f"sum of balances {total:,} (expected {expected:,}): "
        + ("conserved" if total == expected else "NOT CONSERVED"),
        f"prepared transactions left: {prepared}",
    ]
    ok = total == expected and prepared == 0
    for variant, ids in committed.items():
        pg_ids = {i for v, i in pg_rows if v == variant}
        my_ids = {i for v, i in my_rows if v == variant}
        missing = len(set(ids) - (pg_ids & my_ids))
        one_sided = len(pg_ids ^ my_ids)
        fine = missing == 0 and one_sided == 0
        if variant in ATOMIC:
            ok = ok and fine
        lines.append(
            f"{LABELS[variant]}: {len(ids):,} committed, "
            + ("each on both sides" if fine else f"{missing} missing, {one_sided} on one side")
        )
    return lines, ok


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="one round of 2 s slices (under 90 s in all)"
    )
    parser.add_argument("--threads", type=counts, default=Options.threads, metavar="N,N,...")
    parser.add_argument("--rounds", type=int, help=f"default {Options.rounds}")
    parser.add_argument(
        "--slice", type=float, dest="slice_s", help=f"seconds, default {Options.slice_s:g}"
    )
    parser.add_argument("--accounts", type=int, default=Options.accounts)
    parser.add_argument(
        "--variants",
        type=_names,
        default=Options.variants,
        metavar="NAME,...",
        help=", ".join(VARIANTS),
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        help="sessions SQLAlchemy and twostep keep per database (default: the most clients; "
        "0: each library's default)",
    )
    parser.add_argument(
        "--twostep-config",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="one more key of twostep's connection configs (an integer if it looks like one)",
    )


def run(args: argparse.Namespace) -> int:
    options = Options(
        threads=args.threads,
        accounts=args.accounts,
        variants=args.variants,
        pool_size=args.pool_size,
        twostep_config=dict(args.twostep_config),
        **_timing(args, QUICK),
    )
    with private_servers(PG_SETTINGS, MARIA_SETTINGS) as servers:
        coordinator = servers.coordinator(resources=servers.resources())
        with coordinator:
            report = measure(
                options,
                servers.pg_config,
                servers.maria_config,
                coordinator,
                cpu_probes=_cpu_probes(servers, coordinator),
            )
        report.caption = _caption(options, servers)
    print(report.render())
    return 0 if report.ok else 1


def _cpu_probes(servers: Servers, coordinator: CoordinatorProcess) -> CpuProbes:
    """This process (the client threads of every variant), the coordinator, each server."""
    found = {
        "coordinator": coordinator.pid,
        "PostgreSQL": servers.pg.pid,
        "MariaDB": servers.maria.pid,
    }
    pids = {name: pid for name, pid in found.items() if pid is not None}
    if len(pids) < len(found):
        raise RuntimeError(f"a process to measure is not running: {found}")
    return {
        "client": functools.partial(cpu_s, os.getpid()),
        "coordinator": functools.partial(cpu_s, pids["coordinator"]),
        "PostgreSQL": functools.partial(server_cpu_s, pids["PostgreSQL"]),
        "MariaDB": functools.partial(cpu_s, pids["MariaDB"]),
    }


def _timing(args: argparse.Namespace, quick: Mapping[str, float]) -> dict[str, float]:
    """--quick's settings, then --rounds / --slice where given."""
    given = {"rounds": args.rounds, "slice_s": args.slice_s}
    return {**(quick if args.quick else {}), **{k: v for k, v in given.items() if v is not None}}


def _caption(options: Options, servers: Servers) -> str:
    with pg_connect(servers.pg_config) as pg:
        (pg_version,) = pg.execute("SHOW server_version").fetchone()  # type: ignore[misc]
    with contextlib.closing(my_connect(servers.maria_config)) as my, my.cursor() as cur:
        cur.execute("SELECT VERSION()")
        (my_version,) = cur.fetchone()
    pool = "the most clients" if options.pool_size is None else options.pool_size or "defaults"
    return (
        f"Transfer benchmark, {machine()}; PostgreSQL {pg_version.split()[0]}, "
        f"MariaDB {my_version.split('-')[0]}; {options.rounds} round(s) of {options.slice_s:g} s "
        f"slices per variant and client count; {options.accounts:,} accounts; pool size: {pool}"
    )


def _names(text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; known: {VARIANTS}")
    return names
