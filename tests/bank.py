"""The bank workload of the crash suite, and the invariants every fault must leave intact.

Transfers debit an account on PostgreSQL and credit one on MariaDB in one global
transaction, and write the transfer id on both sides (tests/bank_worker.py, a separate client
process, so that it can be SIGKILLed or killed by a client failpoint). The coordinator, a
process too, has both databases registered as resources under the names the client uses.

    bank = Bank(pg, maria, pg_config, maria_config, tmp_path)   # schema, proxies, cluster id
    coordinator = coordinator_factory(bank.coordinator_dir, args=bank.coordinator_args())
    worker = bank.worker(coordinator, failpoints="client.after_decision")
    worker.wait_exit(20)
    bank.recover(coordinator)             # Admin.Recover until nothing of ours is prepared
    assert bank.violations(coordinator) == []

The invariants (`violations()` returns each broken one as a sentence):
- money is conserved: the balances of both databases add up to what they started with, and on
  each side the balances agree with the transfers recorded there;
- every transfer id is on both sides or on neither, with the same amount;
- no xid of this bank's coordinator cluster is left in pg_prepared_xacts or XA RECOVER;
- no row lock is held: a probe that updates every account and transfer row, and inserts every
  attempted transfer id that is missing, succeeds with a 1 s lock timeout on both databases;
- what the client was told is true: a transfer it saw committed is there, one it saw aborted
  is not; and (given the coordinator) a transfer is there exactly when its gtrid's decision
  is COMMIT.
The client's connections go through a `TcpProxy` per database, so a test can cut them; the
coordinator's go straight to the servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from tcp_proxy import TcpProxy

from twostep.client.tpc import FORMAT_ID, Xid, parse_gtrid
from twostep.testing import Admin, CoordinatorProcess, MariaDBServer, PostgresServer, config_toml
from twostep.testing._processes import is_stopped

__all__ = ["MARIA", "PG", "Bank", "Journal", "Transfer", "Worker"]

PG = "bank_pg"  # resource / connection names, as in bank_worker.py
MARIA = "bank_maria"
WORKER_SCRIPT = Path(__file__).with_name("bank_worker.py")
INITIAL_BALANCE = 1_000_000
LOCK_PROBE_TIMEOUT_S = 1
_FINAL = ("committed", "aborted", "unknown", "heuristic")


# -- what the clients did -------------------------------------------------------------------


@dataclass
class Transfer:
    id: str
    gtrid: str | None = None
    outcome: str | None = None  # one of _FINAL; None: its client died before it knew
    detail: str = ""

    @property
    def deadline_s(self) -> int | None:
        return parse_gtrid(self.gtrid).deadline_unix_s if self.gtrid else None


@dataclass
class Journal:
    """Every transfer the workers attempted, from their journal files."""

    transfers: dict[str, Transfer] = field(default_factory=dict)

    @classmethod
    def read(cls, paths: Iterable[Path]) -> Journal:
        journal = cls()
        for path in paths:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                event, _, rest = line.partition(" ")
                tid, _, detail = rest.partition(" ")
                if not tid:
                    continue
                transfer = journal.transfers.setdefault(tid, Transfer(tid))
                if event == "gtrid":
                    transfer.gtrid = detail
                elif event in _FINAL:
                    transfer.outcome, transfer.detail = event, detail
        return journal

    def with_outcome(self, *outcomes: str | None) -> list[Transfer]:
        return [t for t in self.transfers.values() if t.outcome in outcomes]

    def latest_deadline_s(self) -> int:
        """The latest gtrid deadline of the transfers not seen committed (0: none): past
        it, recovery may abort whatever of theirs is still prepared."""
        open_ = [t.deadline_s for t in self.transfers.values() if t.outcome != "committed"]
        return max((d for d in open_ if d is not None), default=0)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.transfers.values():
            key = t.outcome or "in flight"
            out[key] = out.get(key, 0) + 1
        return out


# -- the client process ---------------------------------------------------------------------


class Worker:
    """One bank_worker.py process."""

    def __init__(
        self,
        settings: dict[str, Any],
        failpoints: str,
        log_path: Path,
        env: dict[str, str] | None = None,
    ):
        """`env`: TWOSTEP_* variables of the process besides the failpoints (credentials)."""
        self.settings = settings
        self.failpoints = failpoints
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")} | (env or {})
        env["TWOSTEP_FAILPOINTS"] = failpoints
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), json.dumps(settings)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (also a stopped process) and reap."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        """The exit code (-9: killed, e.g. by a failpoint); kills it and fails on timeout."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker still running after {timeout} s:\n{self.output}"
            ) from None

    def wait_stopped(self, timeout: float) -> None:
        """Wait until the process stopped itself (a failpoint with the `stop` action)."""
        deadline = time.monotonic() + timeout
        while not self.is_stopped():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"worker did not stop at its failpoint:\n{self.output}")
            time.sleep(0.01)

    def is_stopped(self) -> bool:
        return is_stopped(self.pid)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


# -- the bank ---------------------------------------------------------------------------------


class Bank:
    """Accounts on PostgreSQL and MariaDB (fresh databases), the proxies, the coordinator config."""

    def __init__(
        self,
        pg: PostgresServer,
        maria: MariaDBServer,
        pg_config: dict[str, Any],
        maria_config: dict[str, Any],
        directory: Path,
        *,
        accounts: int = 20,
    ):
        self.pg, self.maria = pg, maria
        self.pg_config, self.maria_config = pg_config, maria_config
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.accounts = accounts
        self.cluster_id = "bank" + uuid.uuid4().hex[:8]  # no other coordinator owns our xids
        self.pg_proxy = TcpProxy(pg.port)
        self.maria_proxy = TcpProxy(maria.port)
        self.workers: list[Worker] = []
        self._journals: list[Path] = []
        self._settled: set[str] = set()  # transfers already checked against their decision
        self._create_schema()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.pg_proxy.close()
        self.maria_proxy.close()

    # -- setup ---------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        rows = [(i, INITIAL_BALANCE) for i in range(self.accounts)]
        with self._pg() as conn:
            conn.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
            conn.execute(
                "CREATE TABLE transfers (id TEXT PRIMARY KEY, account INT NOT NULL,"
                " amount INT NOT NULL)"
            )
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO accounts VALUES (%s, %s)", rows)
        with self._maria() as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB"
            )
            cur.execute(
                "CREATE TABLE transfers (id VARCHAR(64) PRIMARY KEY, account INT NOT NULL,"
                " amount INT NOT NULL) ENGINE=InnoDB"
            )
            cur.executemany("INSERT INTO accounts VALUES (%s, %s)", rows)

    @property
    def coordinator_dir(self) -> Path:
        return self.directory / "coordinator"

    def coordinator_args(self, **settings: Any) -> list[str]:
        """`--config FILE` for a coordinator with both databases as resources."""
        path = self.directory / "coordinator.toml"
        path.write_text(self.coordinator_toml(**settings))
        return ["--config", str(path)]

    def coordinator_toml(self, **settings: Any) -> str:
        table = {"cluster_id": self.cluster_id, **settings}
        return config_toml(table, {PG: self.pg_config, MARIA: self.maria_config})

    # -- the workload --------------------------------------------------------------------------

    def worker(
        self,
        coordinator: CoordinatorProcess,
        *,
        failpoints: str = "",
        transfers: int = 1,
        threads: int = 1,
        timeout: float = 5.0,
        seed: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Worker:
        """Start a client process that makes `transfers` transfers on each of `threads`;
        `env`: its TWOSTEP_* variables (e.g. TWOSTEP_CLIENT_TOKEN)."""
        number = len(self.workers)
        journal = self.directory / f"worker-{number}.journal"
        self._journals.append(journal)
        settings = {
            "coordinator": coordinator.address,
            "pg": {**self.pg_config, "port": self.pg_proxy.port, "connect_timeout": 3},
            "maria": {**self.maria_config, "port": self.maria_proxy.port, "connect_timeout": 3},
            "journal": str(journal),
            "transfers": transfers,
            "threads": threads,
            "timeout": timeout,
            "seed": number if seed is None else seed,  # other workers, other accounts
            "tag": f"w{number}",
            "accounts": self.accounts,
        }
        worker = Worker(settings, failpoints, self.directory / f"worker-{number}.log", env)
        self.workers.append(worker)
        return worker

    def journal_path(self, name: str) -> Path:
        """A journal file for clients that are not `Worker`s (forked children, a web app's
        workers; bank_worker.Journal appends to it), read by `journal()` and `violations()`."""
        path = self.directory / f"{name}.journal"
        self._journals.append(path)
        return path

    def journal(self) -> Journal:
        return Journal.read(self._journals)

    # -- recovery --------------------------------------------------------------------------------

    def recover(self, coordinator: CoordinatorProcess, *, patience_s: float = 10.0) -> int:
        """Run Admin.Recover passes until no xid of this cluster is prepared; how many it took.

        An orphan without a decision is aborted only past its deadline (and once two scans
        saw it), so passes go on until the latest deadline a client did not see the end of,
        plus `patience_s`; AssertionError if something is still prepared then.
        """
        give_up = max(self.journal().latest_deadline_s(), time.time()) + patience_s
        passes = 0
        with Admin(coordinator) as admin:
            while True:
                report = admin.recover()
                passes += 1
                if not self.prepared_branches():
                    return passes
                if time.time() > give_up:
                    raise AssertionError(
                        f"still prepared after {passes} recovery passes: "
                        f"{self.prepared_xids()}; the last pass: {report}"
                    )
                time.sleep(0.2)

    # -- the invariants ----------------------------------------------------------------------

    def violations(self, coordinator: CoordinatorProcess | None = None) -> list[str]:
        """Every invariant that does not hold now, as sentences (empty: all hold)."""
        journal = self.journal()
        found: list[str] = []
        pg_transfers, pg_sum = self._pg_rows()
        maria_transfers, maria_sum = self._maria_rows()
        initial = INITIAL_BALANCE * self.accounts
        if pg_sum + maria_sum != 2 * initial:
            found.append(f"money not conserved: {pg_sum} + {maria_sum} != {2 * initial}")
        debited = sum(pg_transfers.values())
        credited = sum(maria_transfers.values())
        if pg_sum != initial - debited:
            found.append(f"PostgreSQL balances {pg_sum} disagree with its debits {debited}")
        if maria_sum != initial + credited:
            found.append(f"MariaDB balances {maria_sum} disagree with its credits {credited}")
        only_pg = sorted(set(pg_transfers) - set(maria_transfers))
        only_maria = sorted(set(maria_transfers) - set(pg_transfers))
        if only_pg:
            found.append(f"transfers only on PostgreSQL: {_few(only_pg)}")
        if only_maria:
            found.append(f"transfers only on MariaDB: {_few(only_maria)}")
        both = set(pg_transfers) & set(maria_transfers)
        differ = sorted(t for t in both if pg_transfers[t] != maria_transfers[t])
        if differ:
            found.append(f"transfers with different amounts: {_few(differ)}")
        prepared = self.prepared_xids()
        if prepared:
            found.append(f"xids of cluster {self.cluster_id} still prepared: {_few(prepared)}")
        missing = sorted(set(journal.transfers) - set(pg_transfers) - set(maria_transfers))
        found += self._lock_probe(missing)

        present = set(pg_transfers) & set(maria_transfers)
        lost = sorted(t.id for t in journal.with_outcome("committed") if t.id not in present)
        if lost:
            found.append(f"transfers the client saw committed are missing: {_few(lost)}")
        ghost = sorted(t.id for t in journal.with_outcome("aborted") if t.id in present)
        if ghost:
            found.append(f"transfers the client saw aborted are there: {_few(ghost)}")
        heuristic = journal.with_outcome("heuristic")
        if heuristic:
            found.append(f"heuristic outcomes: {_few([f'{t.id}: {t.detail}' for t in heuristic])}")
        if coordinator is not None:
            anywhere = set(pg_transfers) | set(maria_transfers)
            found += self._against_decisions(coordinator, journal, anywhere)
        return found

    def transfer_ids(self) -> set[str]:
        """The transfers that are on both sides."""
        return set(self._pg_rows()[0]) & set(self._maria_rows()[0])

    def _against_decisions(
        self, coordinator: CoordinatorProcess, journal: Journal, present: set[str]
    ) -> list[str]:
        """A transfer is there exactly when the coordinator decided COMMIT for its gtrid.

        Checked once per transfer: a check runs when its client is gone and recovery is
        done, after which neither its decision nor its rows can change (it is "settled").
        """
        wrong = []
        for transfer in journal.transfers.values():
            if transfer.id in self._settled:
                continue
            self._settled.add(transfer.id)
            if transfer.gtrid is None:
                if transfer.id in present:
                    wrong.append(f"{transfer.id} (no gtrid yet) is there")
                continue
            view = coordinator.get(transfer.gtrid)
            committed = view is not None and view.state_name == "COMMITTED"
            if committed != (transfer.id in present):
                state = view.state_name if view else "unknown to the coordinator"
                where = "there" if transfer.id in present else "not there"
                wrong.append(f"{transfer.id} is {where} but {transfer.gtrid} is {state}")
        return [f"data contradicts the decision: {_few(wrong)}"] if wrong else []

    def _pg_rows(self) -> tuple[dict[str, int], int]:
        """(transfer id -> amount, sum of the balances) on PostgreSQL."""
        with self._pg() as conn:
            transfers = conn.execute("SELECT id, amount FROM transfers").fetchall()
            (balance,) = conn.execute("SELECT sum(balance) FROM accounts").fetchone()
        return dict(transfers), int(balance)

    def _maria_rows(self) -> tuple[dict[str, int], int]:
        with self._maria() as conn, conn.cursor() as cur:
            cur.execute("SELECT id, amount FROM transfers")
            transfers = cur.fetchall()
            cur.execute("SELECT sum(balance) FROM accounts")
            (balance,) = cur.fetchone()
        return dict(transfers), int(balance)

    def prepared_xids(self) -> list[str]:
        """Prepared branches of this bank's cluster, as "PostgreSQL gtrid/bqual" lines."""
        return [f"{server} {xid.gtrid}/{xid.bqual}" for server, xid in self.prepared_branches()]

    def prepared_branches(self) -> list[tuple[str, Xid]]:
        """(server name, xid) of every prepared branch of this bank's cluster, any database."""
        ours = []
        with self.pg.admin_connect() as conn:
            for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall():
                xid = Xid.from_pg_gid(gid)
                if xid is not None and xid.info.cluster == self.cluster_id:
                    ours.append((self.pg.name, xid))
        with self._maria() as conn, conn.cursor() as cur:
            cur.execute("XA RECOVER")
            for row in cur.fetchall():
                xid = Xid.from_mysql_recover(*row) if row[0] == FORMAT_ID else None
                if xid is not None and xid.info.cluster == self.cluster_id:
                    ours.append((self.maria.name, xid))
        return ours

    def _lock_probe(self, missing_ids: Sequence[str]) -> list[str]:
        """Touch every row a transfer may have locked, with a 1 s lock timeout, then roll back:
        every account, every transfer, and the key of every attempted transfer that is absent
        (a prepared INSERT holds that key)."""
        found = []
        try:
            with self._pg() as conn, conn.transaction(force_rollback=True):
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_PROBE_TIMEOUT_S}s'")
                conn.execute("UPDATE accounts SET balance = balance")
                conn.execute("UPDATE transfers SET amount = amount")
                conn.execute(
                    "INSERT INTO transfers (id, account, amount)"
                    " SELECT unnest(%s::text[]), -1, 0 ON CONFLICT DO NOTHING",
                    [list(missing_ids)],
                )
        except psycopg.errors.LockNotAvailable as exc:
            found.append(f"a row is still locked on PostgreSQL: {exc}")
        with self._maria() as conn, conn.cursor() as cur:
            try:
                cur.execute("SET SESSION innodb_lock_wait_timeout = %s", [LOCK_PROBE_TIMEOUT_S])
                cur.execute("START TRANSACTION")
                cur.execute("UPDATE accounts SET balance = balance")
                cur.execute("UPDATE transfers SET amount = amount")
                if missing_ids:
                    cur.executemany(
                        "INSERT IGNORE INTO transfers (id, account, amount) VALUES (%s, -1, 0)",
                        [(tid,) for tid in missing_ids],
                    )
            except pymysql.MySQLError as exc:
                if exc.args[0] != 1205:  # ER_LOCK_WAIT_TIMEOUT
                    raise
                found.append(f"a row is still locked on MariaDB: {exc}")
            finally:
                cur.execute("ROLLBACK")
        return found

    # -- sessions --------------------------------------------------------------------------------

    def _pg(self) -> psycopg.Connection[Any]:
        return self.pg.admin_connect(self.pg_config["database"])

    @contextlib.contextmanager
    def _maria(self, database: str | None = None) -> Iterator[pymysql.connections.Connection]:
        """A root session on `database`, by default the bank's."""
        conn = self.maria.admin_connect(database or self.maria_config["database"])
        try:
            yield conn
        finally:
            conn.close()


def _few(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown
