"""The embedded decision log: one SQLite file in WAL mode, one writer thread, group commit.

Writes go through a queue to one writer thread. It takes whatever is queued (up to
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

The queue is bounded: what the wire asks for (`record_begun`, `decide`, `record_acks`) is
refused with `LogBusy` (nothing queued) once `max_queued` rows wait for the writer, so a flood
of Begins costs a bounded amount of memory and the caller is told to come back (the servicer
answers RESOURCE_EXHAUSTED), instead of every caller waiting behind a queue that only grows.
A proposal counts as one row per branch it carries (at least one). Begins and Acks (nobody
waits for them) may fill only an eighth of the queue (`_UNWAITED_SHARE`), so a flood of
Begins leaves room for the decisions clients wait for, and a Commit waits behind few of them.
Recovery's and the operator's writes (notes, resolutions, prunes) are never refused: they are
few and they are how the log gets finished work out of the way.

Pruning (`prune`) is one more kind of writer request: at most `limit` rows deleted in the
writer's transaction, queued behind and ahead of decisions like any other request, so a
long prune is many short writes between decisions, never one long one. SQLite keeps deleted
pages in the file and reuses them, so the file stops growing once inserts and prunes
balance; the WAL is checkpointed automatically (every 1000 pages) and cut back to
`_WAL_SIZE_LIMIT` after a checkpoint, so it does not keep its high-water size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostep.client.tpc.failpoints import AFTER_DECISION_FSYNC, BEFORE_DECISION_FSYNC, failpoint

from . import sqlite_statements as sql
from .interface import (
    Ack,
    Begun,
    Decision,
    ListQuery,
    LogBusy,
    LogUnavailable,
    Note,
    Proposal,
    Resolution,
    Resolved,
    State,
    TransactionRecord,
)

__all__ = ["LOG_FILE_NAME", "SqliteDecisionLog", "WriterStats"]

log = logging.getLogger("twostep.coordinator.log")

LOG_FILE_NAME = "decisions.sqlite3"
_BUSY_TIMEOUT_MS = 10_000  # wait for another process's write lock (several writers, one file)
_DECIDE_WAIT_S = 60.0  # a decision not confirmed by then is reported as unavailable: ask again
_WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint
#: The queue holds this many full batches of the wire's rows before it refuses more: enough
#: that a burst waits its turn, few enough that the last one in waits seconds, not minutes.
_QUEUED_BATCHES = 20
#: Begins and Acks may fill 1/this of the queue: a Commit never waits behind more of them than
#: a few batches' worth (measured: a Begin flood at half the queue kept Commits 1-2 s waiting).
_UNWAITED_SHARE = 8


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class WriterStats:
    """Counters of the writer, for tests, benchmarks and (later) metrics."""

    requests: int  # calls queued for the writer (record_begun, decide, record_acks, flush)
    items: int  # rows those calls carried
    batches: int  # SQLite transactions committed
    failed_batches: int
    fsyncs: int  # of those, committed with an fsync (synchronous=FULL; checkpoints not counted)

    @property
    def items_per_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Request:
    """One call's work for the writer; `done` is set when a caller waits for it."""

    begun: Sequence[Begun] = ()
    proposals: Sequence[Proposal] = ()
    acks: Sequence[Ack] = ()
    notes: Sequence[Note] = ()
    resolution: Resolution | None = None
    prune: tuple[int, int] | None = None  # (completed before ms, at most this many rows)
    #: Resolved with the request's decisions (or its one `Resolved`) once they are durable.
    done: Future[list[Any]] | None = None
    size: int = field(init=False)
    bounded_rows: int = 0  # counted against max_queued while queued

    def __post_init__(self) -> None:
        self.size = len(self.begun) + len(self.proposals) + len(self.acks) + len(self.notes)
        self.size += self.resolution is not None
        self.size += self.prune[1] if self.prune else 0

    @property
    def queued_rows(self) -> int:
        """What the request weighs against `max_queued`: its rows, a proposal's branches."""
        proposals = sum(max(1, len(p.branches)) for p in self.proposals)
        return len(self.begun) + proposals + len(self.acks)


def _redone_if_lost(request: _Request) -> bool:
    """Whether losing the request's rows to a power cut is harmless: Begins and Acks that
    nobody waits for (presumed abort and recovery redo them)."""
    return request.done is None and not (
        request.proposals or request.notes or request.resolution or request.prune
    )


_STOP = _Request()  # queued by close(): the writer exits after what came before it


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
        `_QUEUED_BATCHES` batches of `max_batch`)."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = (directory / LOG_FILE_NAME).resolve()
        self._max_batch = max_batch
        self._max_queued = max_queued or _QUEUED_BATCHES * max_batch
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

        # Lock order: _submit_lock, then _stats_lock; neither is ever held while waiting for
        # SQLite or for a future. The decision path holds no Python lock at all: its only lock
        # is SQLite's write lock (BEGIN IMMEDIATE), and the first decision wins by primary key.
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # guards _closed and the queue's end: no request
        self._closed = False  # is queued after _STOP, so none is left unanswered
        self._queued_rows = 0  # the wire's rows queued and not yet taken by the writer
        self._stats_lock = threading.Lock()  # guards _stats (written by the writer and submit)
        self._stats = WriterStats(0, 0, 0, 0, 0)
        self._synced = True  # the writer connection's synchronous setting: FULL (else NORMAL)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle ones
        self._writer = threading.Thread(
            target=self._write_forever, name="twostep-log-writer", daemon=True
        )
        self._writer.start()

    # -- DecisionLog ---------------------------------------------------------------------------

    def record_begun(self, begun: Sequence[Begun]) -> None:
        self._submit(_Request(begun=tuple(begun)), bounded=True)

    def decide(self, proposals: Sequence[Proposal]) -> list[Decision]:
        return self._wait(_Request(proposals=tuple(proposals), done=Future()), bounded=True)

    def resolve(self, resolution: Resolution) -> Resolved:
        (resolved,) = self._wait(_Request(resolution=resolution, done=Future()))
        return resolved  # type: ignore[no-any-return]

    def add_notes(self, notes: Sequence[Note]) -> None:
        if notes:
            self._wait(_Request(notes=tuple(notes), done=Future()))

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
        (deleted,) = self._wait(_Request(prune=(completed_before_ms, limit), done=Future()))
        return deleted  # type: ignore[no-any-return]

    def summary(self, *, incomplete_only: bool = False) -> dict[tuple[State, bool], int]:
        with self._reader() as db:
            return sql.summary(db, incomplete_only=incomplete_only)

    def take_work(self, gtrids: Sequence[str]) -> contextlib.AbstractContextManager[set[str]]:
        return contextlib.nullcontext(set(gtrids))  # one coordinator per file (its data dir)

    def _wait(self, request: _Request, *, bounded: bool = False) -> list[Any]:
        assert request.done is not None
        self._submit(request, bounded=bounded)
        try:
            return request.done.result(timeout=_DECIDE_WAIT_S)
        except TimeoutError as exc:
            raise LogUnavailable("the decision log did not confirm in time") from exc

    def record_acks(self, acks: Sequence[Ack]) -> None:
        self._submit(_Request(acks=tuple(acks)), bounded=True)

    def flush(self) -> None:
        done: Future[list[Any]] = Future()
        self._submit(_Request(done=done))
        done.result()

    def get(self, gtrid: str) -> TransactionRecord | None:
        with self._reader() as db:
            return sql.get(db, gtrid)

    def list_transactions(self, query: ListQuery) -> list[TransactionRecord]:
        with self._reader() as db:
            return sql.list_transactions(db, query)

    def close(self) -> None:
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._writer_db.close()
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    # -- introspection -------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        with self._stats_lock:
            return self._stats

    # -- the writer ----------------------------------------------------------------------------

    def _submit(self, request: _Request, *, bounded: bool = False) -> None:
        """Queue `request`; `bounded`: one of the wire's, refused with `LogBusy` (and not
        queued) when the rows waiting and its own would be more than `max_queued` (an
        `_UNWAITED_SHARE` of it for a request nobody waits for: Begins, Acks)."""
        with self._submit_lock:
            if self._closed:
                raise LogUnavailable("the decision log is closed")
            if bounded:
                rows = request.queued_rows
                limit = self._max_queued if request.done else self._max_queued // _UNWAITED_SHARE
                if self._queued_rows and self._queued_rows + rows > limit:
                    raise LogBusy(
                        f"the decision log's queue is full ({self._queued_rows} rows waiting)"
                    )
                request.bounded_rows = rows
                self._queued_rows += rows
            self._queue.put(request)
            with self._stats_lock:
                self._stats = dataclasses.replace(self._stats, requests=self._stats.requests + 1)

    def _write_forever(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if batch[0] is _STOP:
                return
            size = batch[0].size
            while size < self._max_batch:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if request is _STOP:
                    stopping = True
                    break
                batch.append(request)
                size += request.size
            with self._submit_lock:
                self._queued_rows -= sum(request.bounded_rows for request in batch)
            self._write_batch(batch, size)

    def _write_batch(self, batch: list[_Request], size: int) -> None:
        try:
            results = self._apply(batch) if size else [[] for _ in batch]
        except Exception as exc:  # the writer thread must survive to answer the next batch
            with contextlib.suppress(sqlite3.Error):
                self._writer_db.execute("ROLLBACK")
            log.error(
                "decision log batch failed, nothing in it was recorded",
                extra={"items": size, "error": f"{type(exc).__name__}: {exc}"},
            )
            with self._stats_lock:
                s = self._stats
                self._stats = dataclasses.replace(s, failed_batches=s.failed_batches + 1)
            failure = LogUnavailable(f"the decision log could not write: {exc}")
            for request in batch:
                if request.done is not None:
                    request.done.set_exception(failure)
            return
        if size:
            with self._stats_lock:
                s = self._stats
                self._stats = dataclasses.replace(
                    s,
                    items=s.items + size,
                    batches=s.batches + 1,
                    fsyncs=s.fsyncs + self._synced,
                )
        for request, decisions in zip(batch, results, strict=True):
            if request.done is not None:
                request.done.set_result(decisions)

    def _apply(self, batch: list[_Request]) -> list[list[Any]]:
        db = self._writer_db
        synced = not all(_redone_if_lost(request) for request in batch)
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
        return results

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
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
