"""The four ways the transfer benchmark moves money from PostgreSQL to MariaDB.

Each variant has `open(threads)` (sessions for that many client threads, not timed),
`transfer(worker, t)` (one transfer by client thread `worker`; raises if it did not commit)
and `close()`. See `bench.transfer` for what each one stands for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql
from psycopg import sql

from twostep.client import ConnectionManager, get_connection, global_transaction

from ._env import MY_NAME, PG_NAME

__all__ = [
    "ATOMIC",
    "LABELS",
    "SHORT",
    "VARIANTS",
    "Transfer",
    "make_variants",
    "my_connect",
    "pg_connect",
]

VARIANTS = ("local", "hand-2pc", "sqlalchemy", "twostep")
LABELS = {
    "local": "local commits (not atomic)",
    "hand-2pc": "hand-written 2PC",
    "sqlalchemy": "SQLAlchemy twophase",
    "twostep": "twostep",
}
SHORT = {"local": "local", "hand-2pc": "hand 2PC", "sqlalchemy": "SQLAlchemy", "twostep": "twostep"}
ATOMIC = ("hand-2pc", "sqlalchemy", "twostep")

# DB-API (%s) statements for the baselines; twostep takes `?` placeholders.
_DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
_CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
_RECORD = "INSERT INTO transfers (id, variant, amount) VALUES (%s, %s, %s)"


@dataclass(frozen=True)
class Transfer:
    tid: str
    variant: str
    source: int  # PostgreSQL account
    target: int  # MariaDB account
    amount: int


def pg_connect(config: Mapping[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=config["host"],
        port=config["port"],
        user=config["username"],
        password=config["password"],
        dbname=config["database"],
        autocommit=True,
    )


def my_connect(config: Mapping[str, Any]) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=config["host"],
        port=config["port"],
        user=config["username"],
        password=config["password"],
        database=config["database"],
        autocommit=True,
    )


class _SessionPairs:
    """One persistent (PostgreSQL, MariaDB) session pair per client thread, for the variants
    written by hand (never two of them at once, so they share the pairs)."""

    def __init__(self, pg_config: Mapping[str, Any], my_config: Mapping[str, Any]):
        self._configs = (pg_config, my_config)
        self.pairs: list[tuple[psycopg.Connection[Any], pymysql.connections.Connection]] = []

    def ensure(self, count: int) -> None:
        while len(self.pairs) < count:
            pg_config, my_config = self._configs
            self.pairs.append((pg_connect(pg_config), my_connect(my_config)))

    def close(self) -> None:
        for pg, my in self.pairs:
            pg.close()
            my.close()
        self.pairs = []


class _Local:
    """Two local transactions, committed one after the other: not atomic."""

    def __init__(self, pairs: _SessionPairs):
        self._pairs = pairs

    def open(self, threads: int) -> None:
        self._pairs.ensure(threads)

    def transfer(self, worker: int, t: Transfer) -> None:
        pg, my = self._pairs.pairs[worker]
        with pg.transaction():
            pg.execute(_DEBIT, (t.amount, t.source))
            pg.execute(_RECORD, (t.tid, t.variant, t.amount))
        my.begin()
        try:
            with my.cursor() as cur:
                cur.execute(_CREDIT, (t.amount, t.target))
                cur.execute(_RECORD, (t.tid, t.variant, t.amount))
            my.commit()
        except BaseException:
            my.rollback()
            raise

    def close(self) -> None:
        self._pairs.close()


class _HandWritten2PC:
    """Sequential 2PC on persistent sessions, no log: what a careful hand-written loop does."""

    def __init__(self, pairs: _SessionPairs):
        self._pairs = pairs

    def open(self, threads: int) -> None:
        self._pairs.ensure(threads)

    def transfer(self, worker: int, t: Transfer) -> None:
        pg, my = self._pairs.pairs[worker]
        gid = f"bench_{t.tid}"
        prepare = sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid))
        try:
            pg.execute("BEGIN")
            pg.execute(_DEBIT, (t.amount, t.source))
            pg.execute(_RECORD, (t.tid, t.variant, t.amount))
            with my.cursor() as cur:
                cur.execute("XA START %s", (gid,))
                cur.execute(_CREDIT, (t.amount, t.target))
                cur.execute(_RECORD, (t.tid, t.variant, t.amount))
                cur.execute("XA END %s", (gid,))
                cur.execute("XA PREPARE %s", (gid,))
            pg.execute(prepare)
        except BaseException:
            _undo(pg, my, gid)
            raise
        pg.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
        with my.cursor() as cur:
            cur.execute("XA COMMIT %s", (gid,))

    def close(self) -> None:
        self._pairs.close()


def _undo(pg: psycopg.Connection[Any], my: pymysql.connections.Connection, gid: str) -> None:
    """Roll back whatever of a failed hand-written transfer is left, ignoring what is not."""
    with contextlib.suppress(psycopg.Error):
        if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            pg.execute("ROLLBACK")
    with contextlib.suppress(psycopg.Error):
        pg.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    for statement in ("XA END %s", "XA ROLLBACK %s"):
        with contextlib.suppress(pymysql.Error), my.cursor() as cur:
            cur.execute(statement, (gid,))


class _SQLAlchemy:
    """A `Session(twophase=True)` over two engines: prepare both, then commit both."""

    def __init__(self, pg_config: Mapping[str, Any], my_config: Mapping[str, Any], pool: int):
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import sessionmaker

        pool_args = {"pool_size": pool, "max_overflow": 0} if pool else {}
        self._pg = create_engine(_url("postgresql+psycopg", pg_config), **pool_args)
        self._my = create_engine(_url("mysql+pymysql", my_config), **pool_args)
        self._sessions = sessionmaker(twophase=True)
        self._debit = text("UPDATE accounts SET balance = balance - :amount WHERE id = :id")
        self._credit = text("UPDATE accounts SET balance = balance + :amount WHERE id = :id")
        self._record = text("INSERT INTO transfers (id, variant, amount) VALUES (:id, :v, :a)")

    def open(self, threads: int) -> None:
        pass  # the engines' pools open sessions on demand and keep them

    def transfer(self, worker: int, t: Transfer) -> None:
        record = {"id": t.tid, "v": t.variant, "a": t.amount}
        with self._sessions() as session, session.begin():
            pg, my = {"bind": self._pg}, {"bind": self._my}
            session.execute(self._debit, {"amount": t.amount, "id": t.source}, bind_arguments=pg)
            session.execute(self._record, record, bind_arguments=pg)
            session.execute(self._credit, {"amount": t.amount, "id": t.target}, bind_arguments=my)
            session.execute(self._record, record, bind_arguments=my)

    def close(self) -> None:
        self._pg.dispose()
        self._my.dispose()


def _url(driver: str, config: Mapping[str, Any]) -> Any:
    from sqlalchemy import URL

    return URL.create(
        driver,
        username=config["username"],
        password=config["password"] or None,
        host=config["host"],
        port=config["port"],
        database=config["database"],
    )


class _Twostep:
    """`global_transaction()` through the public API."""

    def __init__(
        self,
        pg_config: Mapping[str, Any],
        my_config: Mapping[str, Any],
        extra: Mapping[str, Any],
        coordinator: str,
        timeout_s: float,
    ):
        ConnectionManager.configure(PG_NAME, {**pg_config, **extra})
        ConnectionManager.configure(MY_NAME, {**my_config, **extra})
        self._coordinator = coordinator
        self._timeout_s = timeout_s

    def open(self, threads: int) -> None:
        pass  # the connections' pools open sessions on demand

    def transfer(self, worker: int, t: Transfer) -> None:
        with global_transaction(coordinator=self._coordinator, timeout=self._timeout_s):
            orders, billing = get_connection(PG_NAME), get_connection(MY_NAME)
            orders.execute(
                "UPDATE accounts SET balance = balance - ? WHERE id = ?", (t.amount, t.source)
            )
            orders.execute(
                "INSERT INTO transfers (id, variant, amount) VALUES (?, ?, ?)",
                (t.tid, t.variant, t.amount),
            )
            billing.execute(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?", (t.amount, t.target)
            )
            billing.execute(
                "INSERT INTO transfers (id, variant, amount) VALUES (?, ?, ?)",
                (t.tid, t.variant, t.amount),
            )

    def close(self) -> None:
        ConnectionManager.close_all()


def make_variants(
    names: tuple[str, ...],
    pg_config: Mapping[str, Any],
    my_config: Mapping[str, Any],
    *,
    pool: int,
    twostep_config: Mapping[str, Any],
    coordinator: str,
    timeout_s: float,
) -> dict[str, Any]:
    """The variants `names`, by name. `pool`: sessions SQLAlchemy and twostep keep per
    database (0: their defaults); `twostep_config`: more keys of twostep's connection configs."""
    pairs = _SessionPairs(pg_config, my_config)
    twostep_extra = {**({"pool_size": pool} if pool else {}), **twostep_config}
    makers = {
        "local": lambda: _Local(pairs),
        "hand-2pc": lambda: _HandWritten2PC(pairs),
        "sqlalchemy": lambda: _SQLAlchemy(pg_config, my_config, pool),
        "twostep": lambda: _Twostep(pg_config, my_config, twostep_extra, coordinator, timeout_s),
    }
    return {name: makers[name]() for name in names}
