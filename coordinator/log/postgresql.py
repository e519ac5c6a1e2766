"""The PostgreSQL decision log: one database shared by several coordinator replicas.

The same `interface.DecisionLog` as the embedded store, with the same group commit
(`writer.GroupCommitWriter`): one writer thread per replica takes whatever is queued and
applies it in one PostgreSQL transaction; callers of `decide` wait until its COMMIT returned
(`synchronous_commit` on: the WAL is flushed, and on a synchronous standby if the server is
set up so). A batch of nothing but Begins and Acks runs with `SET LOCAL synchronous_commit =
off`: like the embedded store's NORMAL sync for such batches, a server crash may lose it, and
presumed abort and recovery redo it; a coordinator crash loses nothing that was committed.
The queue is bounded the same way too (`LogBusy` once `max_queued` rows of the wire's wait).

Replicas. Each replica has its own writer; the rules hold between them through the primary
key on gtrid (`postgresql_statements`), never a lock in memory, so a Commit on one replica
and recovery's expiry-Abort on another get one decision. A batch that lost a deadlock to
another replica's (rows locked in another order) is retried whole: nothing of it was written.
Recovery work is split with advisory locks per gtrid (`take_work`), held on a connection of
their own, released when the pass ends or the replica dies (its session ends).

A batch whose connection broke fails (`LogUnavailable`: ask again; a Commit's decision may or
may not have been taken, and the retry finds it); the next batch reconnects. Reads use their
own autocommit connections and see what was committed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from twostep.client.tpc.failpoints import AFTER_DECISION_FSYNC, BEFORE_DECISION_FSYNC, failpoint

from . import postgresql_statements as sql
from .interface import (
    Ack,
    Begun,
    Decision,
    ListQuery,
    LogUnavailable,
    Note,
    Proposal,
    Resolution,
    Resolved,
    State,
    TransactionRecord,
)
from .writer import GroupCommitWriter, Request, WriterStats, redone_if_lost

__all__ = ["PostgresDecisionLog"]

log = logging.getLogger("twostep.coordinator.log")

_RETRIES = 3  # a batch that lost a deadlock or a resolution race is tried again this often
_CONNECT_TIMEOUT_S = 10


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresDecisionLog:
    """The PostgreSQL store of `interface.DecisionLog` (see the module docstring).

    `conninfo`: a libpq connection string or URL (no password: `password` is given apart, so
    it never shows in a message); `cluster_id`: the id this coordinator runs with, recorded by
    the first coordinator that opens the log; `max_batch`, `max_queued` as in `writer`.
    Raises `LogUnavailable` when the database cannot be reached or belongs to another cluster
    id.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        password: str = "",
        cluster_id: str,
        max_batch: int = 1000,
        max_queued: int | None = None,
        clock: Callable[[], int] = _now_ms,
    ):
        self._conninfo = conninfo
        self._password = password
        self._clock = clock
        self._writer_db: psycopg.Connection[Any] | None = self._connect()
        try:
            sql.create_schema(self._writer_db)
            kept, self.store_id = sql.identity(self._writer_db, cluster_id)
        except psycopg.Error as exc:
            self._writer_db.close()
            raise LogUnavailable(f"decision log database: {exc}") from None
        if kept != cluster_id:
            self._writer_db.close()
            raise LogUnavailable(
                f"the decision log database ({self.path}) belongs to cluster {kept!r}, not "
                f"{cluster_id!r}: replicas sharing a log share its cluster id"
            )
        self._readers: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._work_lock = threading.Lock()  # guards _work_db (one pass at a time holds it)
        self._work_db: psycopg.Connection[Any] | None = None
        self._writer = GroupCommitWriter(
            self._apply, max_batch=max_batch, max_queued=max_queued, name="twostep-log-writer"
        )

    @property
    def path(self) -> str:
        """Where the decisions are kept: host, port and database (never the password)."""
        info = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
        return f"postgresql://{where}/{info.get('dbname', '')}"

    # -- DecisionLog ---------------------------------------------------------------------------

    def record_begun(self, begun: Sequence[Begun]) -> None:
        self._writer.submit(Request(begun=tuple(begun)), bounded=True)

    def decide(self, proposals: Sequence[Proposal]) -> list[Decision]:
        return self._writer.wait(Request(proposals=tuple(proposals), done=Future()), bounded=True)

    def decide_nowait(self, proposals: Sequence[Proposal]) -> Future[list[Decision]]:
        request = Request(proposals=tuple(proposals), done=Future())
        return self._writer.pending(request, bounded=True)  # type: ignore[return-value]

    def resolve(self, resolution: Resolution) -> Resolved:
        (resolved,) = self._writer.wait(Request(resolution=resolution, done=Future()))
        return resolved  # type: ignore[no-any-return]

    def add_notes(self, notes: Sequence[Note]) -> None:
        if notes:
            self._writer.wait(Request(notes=tuple(notes), done=Future()))

    def record_acks(self, acks: Sequence[Ack]) -> None:
        self._writer.submit(Request(acks=tuple(acks)), bounded=True)

    def flush(self) -> None:
        self._writer.flush()

    def prune(self, completed_before_ms: int, limit: int) -> int:
        with self._reader() as db:  # the writer is not bothered when there is nothing to do
            if not sql.anything_to_prune(db, completed_before_ms):
                return 0
        (deleted,) = self._writer.wait(Request(prune=(completed_before_ms, limit), done=Future()))
        return deleted  # type: ignore[no-any-return]

    def get(self, gtrid: str) -> TransactionRecord | None:
        with self._reader() as db:
            return sql.get(db, gtrid)

    def list_transactions(self, query: ListQuery) -> list[TransactionRecord]:
        with self._reader() as db:
            return sql.list_transactions(db, query)

    def notes(self, gtrid: str) -> list[Note]:
        with self._reader() as db:
            return sql.notes(db, gtrid)

    def summary(self, *, incomplete_only: bool = False) -> dict[tuple[State, bool], int]:
        with self._reader() as db:
            return sql.summary(db, incomplete_only=incomplete_only)

    def newest_gtrid(self) -> str | None:
        with self._reader() as db:
            return sql.newest_gtrid(db)

    @contextlib.contextmanager
    def take_work(self, gtrids: Sequence[str]) -> Iterator[set[str]]:
        """Of `gtrids`, those this replica may work on until the block ends: those no other
        replica holds. Raises `LogUnavailable`."""
        with self._work_lock:
            try:
                if self._work_db is None or self._work_db.closed:
                    self._work_db = self._connect()
                mine = sql.lock_work(self._work_db, sorted(set(gtrids))) if gtrids else set()
            except psycopg.Error as exc:
                self._drop_work_db()
                raise LogUnavailable(f"cannot take recovery work: {exc}") from None
            try:
                yield mine
            finally:
                try:
                    sql.unlock_work(self._work_db)
                except psycopg.Error:
                    self._drop_work_db()  # its session's end releases the locks

    def close(self) -> None:
        self._writer.close()
        if self._writer_db is not None:
            self._writer_db.close()
        with self._work_lock:
            self._drop_work_db()
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    # -- introspection -------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        return self._writer.stats()

    # -- the writer ----------------------------------------------------------------------------

    def _apply(self, batch: list[Request]) -> tuple[list[list[Any]], bool]:
        """The writer's `apply`: the batch in one transaction, retried after a lost deadlock
        or resolution race; reconnects first when the last batch broke the connection."""
        for attempt in range(_RETRIES + 1):
            db = self._writer_db
            if db is None or db.closed or db.broken:
                with contextlib.suppress(psycopg.Error):
                    if db is not None:
                        db.close()
                self._writer_db = None
                self._writer_db = db = self._connect()
            try:
                return self._apply_once(db, batch)
            except (pg_errors.DeadlockDetected, sql.RaceLost) as exc:
                if attempt == _RETRIES:
                    raise
                log.info("decision log batch retried", extra={"why": type(exc).__name__})
        raise AssertionError("unreachable")

    def _apply_once(self, db: psycopg.Connection[Any], batch: list[Request]) -> tuple[Any, bool]:
        synced = not all(redone_if_lost(request) for request in batch)
        deciding = any(request.proposals or request.resolution for request in batch)
        results: list[list[Any]] = []
        with db.transaction():
            if not synced:
                db.execute("SET LOCAL synchronous_commit = off")
            now = self._clock()
            for request in batch:
                if request.begun:
                    sql.insert_begun(db, request.begun)
                decided: list[Any] = []
                if request.proposals:
                    decided += sql.decide(db, request.proposals, now)
                if request.resolution is not None:
                    decided.append(sql.resolve(db, request.resolution, now))
                if request.prune is not None:
                    decided.append(sql.prune(db, *request.prune))
                results.append(decided)
                if request.notes:
                    sql.insert_notes(db, request.notes, now)
                if request.acks:
                    sql.record_acks(db, request.acks, now)
            if deciding:
                failpoint(BEFORE_DECISION_FSYNC)
        if deciding:  # the transaction block's exit was the COMMIT
            failpoint(AFTER_DECISION_FSYNC)
        return results, synced

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._conninfo,
                password=self._password or None,
                autocommit=True,
                application_name="twostep-coordinator",
                connect_timeout=_CONNECT_TIMEOUT_S,
            )
        except psycopg.Error as exc:
            raise LogUnavailable(
                f"cannot connect to the decision log ({self.path}): {exc}"
            ) from None

    def _drop_work_db(self) -> None:
        if self._work_db is not None:
            with contextlib.suppress(psycopg.Error):
                self._work_db.close()
            self._work_db = None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        if self._writer.closed:
            raise LogUnavailable("the decision log is closed")
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = self._connect()
        try:
            yield db
        except psycopg.OperationalError as exc:
            db.close()  # broken: not given back
            raise LogUnavailable(f"the decision log cannot be read: {exc}") from None
        finally:
            if not db.closed:
                self._readers.put(db)
