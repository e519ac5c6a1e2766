"""The embedded decision log: one SQLite file in WAL mode, one writer thread, group commit.

Writes go through a queue to one writer thread (`writer`). It takes whatever is queued (up to
`max_batch` items), applies all of it in one SQLite transaction and commits once, so many
decisions share one fsync (`synchronous=FULL`: the WAL is synced at that COMMIT). Callers of
`decide` block on a future that the writer resolves only after that COMMIT returned; Begins
and Acks are queued and not waited for. A batch of nothing but Begins and Acks commits
without an fsync (`synchronous=NORMAL`): its WAL frames are synced by the next synced COMMIT
or checkpoint, and a power cut before that loses only what presumed abort and recovery
redo anyway (an unknown gtrid is decided by its deadline; an unacknowledged decision is
finished again, idempotently). A process crash loses nothing: the frames are in the OS.
Reads use their own connections: WAL readers see the
last committed (so durable) state and never block the writer. The statements themselves (the
schema, the rules of `interface` in SQL, the reads) are in `sqlite_statements`.

The queue and the writer thread are `writer.GroupCommitWriter`'s, shared with the PostgreSQL
store: the same bound on the queue (`LogBusy` when full) and the same batching.

Pruning (`prune`) is one more kind of writer request: at most `limit` rows deleted in the
writer's transaction, queued behind and ahead of decisions like any other request, so a
long prune is many short writes between decisions, never one long one. SQLite keeps deleted
pages in the file and reuses them, so the file stops growing once inserts and prunes
balance; the WAL is checkpointed automatically (every 1000 pages) and cut back to
`_WAL_SIZE_LIMIT` after a checkpoint, so it does not keep its high-water size.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from twostep.client.tpc.failpoints import AFTER_DECISION_FSYNC, BEFORE_DECISION_FSYNC, failpoint

from . import sqlite_statements as sql
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

__all__ = ["LOG_FILE_NAME", "SqliteDecisionLog"]

LOG_FILE_NAME = "decisions.sqlite3"
_BUSY_TIMEOUT_MS = 10_000  # wait for another process's write lock (several writers, one file)
_WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteDecisionLog:
    """The embedded store of `interface.DecisionLog`, in `data_dir/decisions.sqlite3`."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_batch: int = 1000,
        max_queued: int | None = None,
        clock: Callable[[], int] = _now_ms,
        busy_timeout_ms: int = _BUSY_TIMEOUT_MS,
    ):
        """`max_queued`: rows the wire's requests may have waiting for the writer (default
        `writer`'s: 20 batches of `max_batch`)."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = (directory / LOG_FILE_NAME).resolve()
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        _owner_only(self.path)
        self._writer_db = self._connect()
        (mode,) = self._writer_db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise LogUnavailable(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
        sql.create_schema(self._writer_db)
        self._writer_db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        _fsync_directory(directory)  # the new file's name is durable too, not just its bytes

        # The decision path holds no lock of this store: its only lock is SQLite's write lock
        # (BEGIN IMMEDIATE), and the first decision wins by primary key.
        self._synced = True  # the writer connection's synchronous setting: FULL (else NORMAL)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle ones
        self._writer = GroupCommitWriter(
            self._apply, max_batch=max_batch, max_queued=max_queued, name="twostep-log-writer"
        )

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

    def notes(self, gtrid: str) -> list[Note]:
        with self._reader() as db:
            return sql.notes(db, gtrid)

    def newest_gtrid(self) -> str | None:
        with self._reader() as db:
            return sql.newest_gtrid(db)

    def prune(self, completed_before_ms: int, limit: int) -> int:
        with self._reader() as db:  # the writer is not bothered when there is nothing to do
            if not sql.anything_to_prune(db, completed_before_ms):
                return 0
        (deleted,) = self._writer.wait(Request(prune=(completed_before_ms, limit), done=Future()))
        return deleted  # type: ignore[no-any-return]

    def summary(self, *, incomplete_only: bool = False) -> dict[tuple[State, bool], int]:
        with self._reader() as db:
            return sql.summary(db, incomplete_only=incomplete_only)

    def take_work(self, gtrids: Sequence[str]) -> contextlib.AbstractContextManager[set[str]]:
        return contextlib.nullcontext(set(gtrids))  # one coordinator per file (its data dir)

    def record_acks(self, acks: Sequence[Ack]) -> None:
        self._writer.submit(Request(acks=tuple(acks)), bounded=True)

    def flush(self) -> None:
        self._writer.flush()

    def get(self, gtrid: str) -> TransactionRecord | None:
        with self._reader() as db:
            return sql.get(db, gtrid)

    def list_transactions(self, query: ListQuery) -> list[TransactionRecord]:
        with self._reader() as db:
            return sql.list_transactions(db, query)

    def close(self) -> None:
        self._writer.close()
        self._writer_db.close()
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
        """The writer's `apply`: the batch in one SQLite transaction, rolled back if it fails."""
        try:
            return self._apply_once(batch)
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                self._writer_db.execute("ROLLBACK")
            raise

    def _apply_once(self, batch: list[Request]) -> tuple[list[list[Any]], bool]:
        db = self._writer_db
        synced = not all(redone_if_lost(request) for request in batch)
        if synced != self._synced:
            db.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            self._synced = synced
        db.execute("BEGIN IMMEDIATE")
        now = self._clock()  # read under the write lock: decisions are ordered by time
        results = []
        for request in batch:
            if request.begun:
                sql.insert_begun(db, request.begun)
            decided: list[Any] = [sql.decide(db, p, now) for p in request.proposals]
            if request.resolution is not None:
                decided.append(sql.resolve(db, request.resolution, now))
            if request.prune is not None:
                decided.append(sql.prune(db, *request.prune))
            results.append(decided)
            if request.notes:
                sql.insert_notes(db, request.notes, now)
            if request.acks:
                sql.record_acks(db, request.acks, now)
        deciding = any(request.proposals or request.resolution for request in batch)
        if deciding:
            failpoint(BEFORE_DECISION_FSYNC)
        db.execute("COMMIT")
        if deciding:
            failpoint(AFTER_DECISION_FSYNC)
        return results, synced

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._writer.closed:
            raise LogUnavailable("the decision log is closed")
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = self._connect()
            db.execute("PRAGMA query_only=1")
        try:
            yield db
        finally:
            self._readers.put(db)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_only(path: Path) -> None:
    """Create the log file if missing, and make it and its -wal and -shm files readable by
    the owner alone (0600) whatever the umask: SQLite gives those the database file's mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(name), 0o600)
