"""The embedded decision log: one SQLite file in WAL mode, one writer thread, group commit.

Writes go through a queue to one writer thread. It takes whatever is queued (up to
`max_batch` items), applies all of it in one SQLite transaction and commits once, so many
decisions share one fsync (`synchronous=FULL`: the WAL is synced at every COMMIT). Callers of
`decide` block on a future that the writer resolves only after that COMMIT returned; Begins
and Acks are queued and not waited for. Reads use their own connections: WAL readers see the
last committed (so durable) state and never block the writer.

The rules of `_log` are SQL statements run inside the writer's transaction: for each decision
one INSERT .. ON CONFLICT (gtrid) DO UPDATE .. WHERE state = 'active' RETURNING, which inserts
an unknown gtrid as aborted or decides an active row, and a read-back of the row when it was
decided already. The first decision wins through the primary key, so the rules hold also when
several processes write to one file (BEGIN IMMEDIATE serializes them).

Schema (one row per gtrid, times in unix epoch milliseconds):

    gtrid TEXT PRIMARY KEY
    begun_ms INTEGER      when Begin handed it out (for an unknown gtrid: when first heard of)
    deadline_ms INTEGER   after it, no COMMIT (for an unknown gtrid: the gtrid's own deadline)
    state TEXT            'active' | 'committed' | 'aborted'
    decided_ms INTEGER    NULL while active
    reason TEXT           why ABORTED (or how COMMITTED, for a one-phase commit)
    branches TEXT         JSON list of {resource, bqual, dialect, session_id, transaction_id}
    completed_ms INTEGER  phase 2 acknowledged; NULL until then

and the notes about gtrids (heuristic outcomes, resolve audit records, recovery remarks):

    id INTEGER PRIMARY KEY, gtrid TEXT, at_ms INTEGER, kind TEXT, text TEXT

Version 2 added the notes and an index of incomplete transactions; a version-1 file is
upgraded in place at open (both are `CREATE ... IF NOT EXISTS`).

Pruning (`prune`) is one more kind of writer request: at most `limit` rows deleted in the
writer's transaction, queued behind and ahead of decisions like any other request, so a
long prune is many short writes between decisions, never one long one. It selects the
oldest rows through the begin-time index (a finished transaction began before it finished).
SQLite keeps deleted pages in the file and reuses them, so the file stops growing once
inserts and prunes balance; the WAL is checkpointed automatically (every 1000 pages) and cut
back to `_WAL_SIZE_LIMIT` after a checkpoint, so it does not keep its high-water size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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

from . import _log
from ._log import (
    Ack,
    Begun,
    BranchRecord,
    Decision,
    Enlistment,
    ListQuery,
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
_SCHEMA_VERSION = 2
_BUSY_TIMEOUT_MS = 10_000  # wait for another process's write lock (several writers, one file)
_DECIDE_WAIT_S = 60.0  # a decision not confirmed by then is reported as unavailable: ask again
_WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS global_transactions (
    gtrid        TEXT PRIMARY KEY,
    begun_ms     INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'committed', 'aborted')),
    decided_ms   INTEGER,
    reason       TEXT NOT NULL DEFAULT '',
    branches     TEXT NOT NULL DEFAULT '[]',
    completed_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS global_transactions_by_begin ON global_transactions (begun_ms);
CREATE INDEX IF NOT EXISTS global_transactions_by_state ON global_transactions (state, begun_ms);
CREATE INDEX IF NOT EXISTS global_transactions_incomplete
    ON global_transactions (begun_ms, gtrid) WHERE completed_ms IS NULL;
CREATE TABLE IF NOT EXISTS notes (
    id    INTEGER PRIMARY KEY,
    gtrid TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    text  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_by_gtrid ON notes (gtrid, id);
"""

_INSERT_BEGUN = """
INSERT INTO global_transactions (gtrid, begun_ms, deadline_ms, state, branches)
VALUES (?, ?, ?, 'active', ?) ON CONFLICT (gtrid) DO NOTHING
"""
# A decision is one upsert: an unknown gtrid is inserted as aborted; an active row is decided
# by the DO UPDATE; a decided row is left alone (the WHERE fails, RETURNING yields nothing, and
# _DECISION_OF reads the decision in force).
_DECIDE_COMMIT = """
INSERT INTO global_transactions
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (:gtrid, :now, :deadline, 'aborted', :now, :unknown, :branches)
ON CONFLICT (gtrid) DO UPDATE
   SET state = CASE WHEN :now < deadline_ms THEN 'committed' ELSE 'aborted' END,
       reason = CASE WHEN :now < deadline_ms THEN '' ELSE :late END,
       decided_ms = :now,
       branches = :branches
 WHERE state = 'active'
RETURNING state, reason
"""
_DECIDE_ABORT = """
INSERT INTO global_transactions
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (:gtrid, :now, :deadline, 'aborted', :now, :reason, :branches)
ON CONFLICT (gtrid) DO UPDATE
   SET state = 'aborted',
       reason = :reason,
       decided_ms = :now,
       branches = CASE WHEN :branches = '[]' THEN branches ELSE :branches END
 WHERE state = 'active'
RETURNING state, reason
"""
_DECISION_OF = "SELECT state, reason FROM global_transactions WHERE gtrid = ?"
_ACK_ONE_PHASE = """
UPDATE global_transactions SET state = 'committed', reason = ?, decided_ms = ?
 WHERE gtrid = ? AND state = 'active'
"""
_ACK_COMPLETED = """
UPDATE global_transactions SET completed_ms = ?
 WHERE gtrid = ? AND state <> 'active' AND completed_ms IS NULL
"""
# Finished rows, oldest first by the begin-time index (begun_ms <= completed_ms always).
_PRUNABLE = """
SELECT gtrid FROM global_transactions
 WHERE begun_ms < :cutoff AND completed_ms < :cutoff
 ORDER BY begun_ms LIMIT :limit
"""
_ANYTHING_TO_PRUNE = """
SELECT EXISTS (SELECT 1 FROM global_transactions
                WHERE begun_ms < :cutoff AND completed_ms < :cutoff)
    OR EXISTS (SELECT 1 FROM notes n WHERE at_ms < :cutoff
                  AND NOT EXISTS (SELECT 1 FROM global_transactions g WHERE g.gtrid = n.gtrid))
"""
_PRUNE_ORPHAN_NOTES = """
DELETE FROM notes WHERE id IN (
    SELECT id FROM notes n WHERE at_ms < :cutoff
       AND NOT EXISTS (SELECT 1 FROM global_transactions g WHERE g.gtrid = n.gtrid)
     LIMIT :limit)
"""
_COLUMNS = "gtrid, state, begun_ms, deadline_ms, decided_ms, reason, branches, completed_ms"
_INSERT_NOTE = "INSERT INTO notes (gtrid, at_ms, kind, text) VALUES (?, ?, ?, ?)"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class WriterStats:
    """Counters of the writer, for tests, benchmarks and (later) metrics."""

    requests: int  # calls queued for the writer (record_begun, decide, record_acks, flush)
    items: int  # rows those calls carried
    batches: int  # SQLite transactions committed, i.e. fsyncs
    failed_batches: int

    @property
    def items_per_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Request:
    """One call's work for the writer; `done` is set when a caller waits for it."""

    begun: Sequence[Begun] = ()
    enlistments: Sequence[Enlistment] = ()
    proposals: Sequence[Proposal] = ()
    acks: Sequence[Ack] = ()
    notes: Sequence[Note] = ()
    resolution: Resolution | None = None
    prune: tuple[int, int] | None = None  # (completed before ms, at most this many rows)
    #: Resolved with the request's decisions (or its one `Resolved`) once they are durable.
    done: Future[list[Any]] | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.begun) + len(self.proposals) + len(self.acks) + len(self.notes)
        self.size += len(self.enlistments)
        self.size += self.resolution is not None
        self.size += self.prune[1] if self.prune else 0


_STOP = _Request()  # queued by close(): the writer exits after what came before it


class SqliteDecisionLog:
    """The embedded store of `_log.DecisionLog`, in `data_dir/decisions.sqlite3`."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_batch: int = 1000,
        clock: Callable[[], int] = _now_ms,
        busy_timeout_ms: int = _BUSY_TIMEOUT_MS,
    ):
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = (directory / LOG_FILE_NAME).resolve()
        self._max_batch = max_batch
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        self._writer_db = self._connect()
        (mode,) = self._writer_db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise LogUnavailable(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
        self._writer_db.executescript(_SCHEMA)
        self._writer_db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._writer_db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        _fsync_directory(directory)  # the new file's name is durable too, not just its bytes

        # Lock order: _submit_lock, then _stats_lock; neither is ever held while waiting for
        # SQLite or for a future. The decision path holds no Python lock at all: its only lock
        # is SQLite's write lock (BEGIN IMMEDIATE), and the first decision wins by primary key.
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # guards _closed and the queue's end: no request
        self._closed = False  # is queued after _STOP, so none is left unanswered
        self._stats_lock = threading.Lock()  # guards _stats (written by the writer and submit)
        self._stats = WriterStats(0, 0, 0, 0)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle ones
        self._writer = threading.Thread(
            target=self._write_forever, name="twostep-log-writer", daemon=True
        )
        self._writer.start()

    # -- DecisionLog ---------------------------------------------------------------------------

    def record_begun(self, begun: Sequence[Begun]) -> None:
        self._submit(_Request(begun=tuple(begun)))

    def decide(self, proposals: Sequence[Proposal]) -> list[Decision]:
        return self._wait(_Request(proposals=tuple(proposals), done=Future()))

    def enlist(self, enlistments: Sequence[Enlistment]) -> list[State | None]:
        return self._wait(_Request(enlistments=tuple(enlistments), done=Future()))

    def resolve(self, resolution: Resolution) -> Resolved:
        (resolved,) = self._wait(_Request(resolution=resolution, done=Future()))
        return resolved  # type: ignore[no-any-return]

    def add_notes(self, notes: Sequence[Note]) -> None:
        if notes:
            self._wait(_Request(notes=tuple(notes), done=Future()))

    def notes(self, gtrid: str) -> list[Note]:
        with self._reader() as db:
            rows = db.execute(
                "SELECT gtrid, at_ms, kind, text FROM notes WHERE gtrid = ? ORDER BY id", (gtrid,)
            ).fetchall()
        return [Note(*row) for row in rows]

    def newest_gtrid(self) -> str | None:
        with self._reader() as db:
            row = db.execute(
                "SELECT gtrid FROM global_transactions ORDER BY begun_ms DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def prune(self, completed_before_ms: int, limit: int) -> int:
        params = {"cutoff": completed_before_ms}
        with self._reader() as db:  # the writer is not bothered when there is nothing to do
            (due,) = db.execute(_ANYTHING_TO_PRUNE, params).fetchone()
        if not due:
            return 0
        (deleted,) = self._wait(_Request(prune=(completed_before_ms, limit), done=Future()))
        return deleted  # type: ignore[no-any-return]

    def summary(self) -> dict[tuple[State, bool], int]:
        with self._reader() as db:
            rows = db.execute(
                "SELECT state, completed_ms IS NOT NULL, COUNT(*) FROM global_transactions"
                " GROUP BY 1, 2"
            ).fetchall()
        return {(State(state), bool(completed)): count for state, completed, count in rows}

    def _wait(self, request: _Request) -> list[Any]:
        assert request.done is not None
        self._submit(request)
        try:
            return request.done.result(timeout=_DECIDE_WAIT_S)
        except TimeoutError as exc:
            raise LogUnavailable("the decision log did not confirm in time") from exc

    def record_acks(self, acks: Sequence[Ack]) -> None:
        self._submit(_Request(acks=tuple(acks)))

    def flush(self) -> None:
        done: Future[list[Any]] = Future()
        self._submit(_Request(done=done))
        done.result()

    def get(self, gtrid: str) -> TransactionRecord | None:
        with self._reader() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM global_transactions WHERE gtrid = ?", (gtrid,)
            ).fetchone()
        return _record(row) if row else None

    def list_transactions(self, query: ListQuery) -> list[TransactionRecord]:
        where, params = [], []
        if query.states:
            where.append(f"state IN ({', '.join('?' * len(query.states))})")
            params.extend(sorted(s.value for s in query.states))
        if query.begun_before_ms is not None:
            where.append("begun_ms < ?")
            params.append(query.begun_before_ms)
        if query.incomplete_only:
            where.append("completed_ms IS NULL")
        if query.decided_before_ms is not None:
            where.append("decided_ms < ?")
            params.append(query.decided_before_ms)
        if query.after is not None:
            where.append("(begun_ms, gtrid) > (?, ?)")
            params.extend(query.after)
        if query.deadline_before_ms is not None:
            where.append("deadline_ms < ?")
            params.append(query.deadline_before_ms)
        sql = f"SELECT {_COLUMNS} FROM global_transactions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY begun_ms, gtrid LIMIT ?"
        params.append(query.limit)
        with self._reader() as db:
            rows = db.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

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

    def _submit(self, request: _Request) -> None:
        with self._submit_lock:
            if self._closed:
                raise LogUnavailable("the decision log is closed")
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
                self._stats = dataclasses.replace(s, items=s.items + size, batches=s.batches + 1)
        for request, decisions in zip(batch, results, strict=True):
            if request.done is not None:
                request.done.set_result(decisions)

    def _apply(self, batch: list[_Request]) -> list[list[Any]]:
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        now = self._clock()  # read under the write lock: decisions are ordered by time
        results = []
        for request in batch:
            if request.begun:
                db.executemany(
                    _INSERT_BEGUN,
                    [
                        (b.gtrid, b.begun_ms, b.deadline_ms, _branches_json(b.branches))
                        for b in request.begun
                    ],
                )
            decided: list[Any] = [_enlist(db, e) for e in request.enlistments]
            decided += [_decide(db, p, now) for p in request.proposals]
            if request.resolution is not None:
                decided.append(_resolve(db, request.resolution, now))
            if request.prune is not None:
                decided.append(_prune(db, *request.prune))
            results.append(decided)
            if request.notes:
                db.executemany(
                    _INSERT_NOTE, [(n.gtrid, n.at_ms or now, n.kind, n.text) for n in request.notes]
                )
            if request.acks:
                one_phase = [a.gtrid for a in request.acks if a.one_phase_commit]
                db.executemany(_ACK_ONE_PHASE, [(_log.ONE_PHASE_COMMIT, now, g) for g in one_phase])
                db.executemany(_ACK_COMPLETED, [(now, a.gtrid) for a in request.acks])
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


def _enlist(db: sqlite3.Connection, enlistment: Enlistment) -> State | None:
    """The Enlist rule of `_log`, inside the writer's transaction."""
    row = db.execute(
        "SELECT state, branches FROM global_transactions WHERE gtrid = ?", (enlistment.gtrid,)
    ).fetchone()
    if row is None:
        return None
    state = State(row[0])
    if state is State.ACTIVE:
        new = {b.resource for b in enlistment.branches}
        kept = [b for b in _branches(row[1]) if b.resource not in new]
        db.execute(
            "UPDATE global_transactions SET branches = ? WHERE gtrid = ?",
            (_branches_json([*kept, *enlistment.branches]), enlistment.gtrid),
        )
    return state


def _decide(db: sqlite3.Connection, proposal: Proposal, now: int) -> Decision:
    params = {
        "gtrid": proposal.gtrid,
        "now": now,
        "deadline": proposal.fallback_deadline_ms,
        "branches": _branches_json(proposal.branches),
    }
    if proposal.commit:
        params.update(unknown=_log.UNKNOWN_TRANSACTION, late=_log.DEADLINE_PASSED)
        rows = db.execute(_DECIDE_COMMIT, params).fetchall()
    else:
        params.update(reason=proposal.reason or _log.ABORTED_BY_CLIENT)
        rows = db.execute(_DECIDE_ABORT, params).fetchall()
    if not rows:  # decided before: that decision stands
        rows = db.execute(_DECISION_OF, (proposal.gtrid,)).fetchall()
    ((state, reason),) = rows
    return Decision(proposal.gtrid, State(state), reason)


def _resolve(db: sqlite3.Connection, resolution: Resolution, now: int) -> Resolved:
    """The Resolve rule of `_log`, with its audit note, inside the writer's transaction."""
    r = resolution
    wanted = State.COMMITTED if r.commit else State.ABORTED
    row = db.execute(
        "SELECT state, reason, branches FROM global_transactions WHERE gtrid = ?", (r.gtrid,)
    ).fetchone()
    previous = State(row[0]) if row else None
    refusal = ""
    if previous in (None, State.ACTIVE):
        if r.commit and not r.force:
            refusal = (
                "no decision is logged (presumed abort"
                + (", and its client may still be preparing" if previous else "")
                + "): committing it needs force"
            )
    elif previous is not wanted and not r.force:
        refusal = (
            f"the logged decision is {previous.value.upper()} ({row[1] or 'no reason given'}): "
            "contradicting it needs force"
        )

    if refusal:
        decision = None
        if previous is not None and previous is not State.ACTIVE:
            decision = Decision(r.gtrid, previous, row[1])
    elif previous is wanted:
        db.execute("UPDATE global_transactions SET completed_ms = NULL WHERE gtrid = ?", (r.gtrid,))
        decision = Decision(r.gtrid, wanted, row[1])
    else:
        reason = f"{_log.RESOLVED_BY_OPERATOR}: {r.reason}"
        stored = _branches(row[2]) if row else []
        known = {b.resource for b in stored}
        merged = [*stored, *(b for b in r.branches if b.resource not in known)]
        db.execute(
            "INSERT INTO global_transactions"
            " (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)"
            " VALUES (:gtrid, :now, :deadline, :state, :now, :reason, :branches)"
            " ON CONFLICT (gtrid) DO UPDATE SET state = :state, decided_ms = :now,"
            " reason = :reason, branches = :branches, completed_ms = NULL",
            {
                "gtrid": r.gtrid,
                "now": now,
                "deadline": r.fallback_deadline_ms,
                "state": wanted.value,
                "reason": reason,
                "branches": _branches_json(merged),
            },
        )
        decision = Decision(r.gtrid, wanted, reason)

    verb = "commit" if r.commit else "abort"
    was = previous.value if previous else "unknown"
    outcome = f"refused: {refusal}" if refusal else "accepted"
    text = (
        f"resolve {verb}{' (force)' if r.force else ''} by {r.who or 'unknown caller'}: "
        f"{outcome}; was {was}; reason: {r.reason or '(none)'}"
    )
    db.execute(_INSERT_NOTE, (r.gtrid, now, "resolve", text))
    return Resolved(not refusal, decision, previous, refusal)


def _prune(db: sqlite3.Connection, cutoff: int, limit: int) -> int:
    """The Prune rule of `_log`, inside the writer's transaction; how many rows it deleted."""
    params = {"cutoff": cutoff, "limit": limit}
    gtrids = [(gtrid,) for (gtrid,) in db.execute(_PRUNABLE, params)]
    db.executemany("DELETE FROM notes WHERE gtrid = ?", gtrids)
    db.executemany("DELETE FROM global_transactions WHERE gtrid = ?", gtrids)
    db.execute(_PRUNE_ORPHAN_NOTES, params)
    return len(gtrids)


def _branches_json(branches: Sequence[BranchRecord]) -> str:
    return json.dumps(
        [
            {
                "resource": b.resource,
                "bqual": b.bqual,
                "dialect": b.dialect,
                "session_id": b.session_id,
                "transaction_id": b.transaction_id,
            }
            for b in branches
        ],
        separators=(",", ":"),
    )


def _branches(text: str) -> list[BranchRecord]:
    return [BranchRecord(**b) for b in json.loads(text)]


def _record(row: tuple[Any, ...]) -> TransactionRecord:
    gtrid, state, begun, deadline, decided, reason, branches, completed = row
    return TransactionRecord(
        gtrid=gtrid,
        state=State(state),
        begun_ms=begun,
        deadline_ms=deadline,
        decided_ms=decided,
        reason=reason,
        branches=tuple(_branches(branches)),
        completed_ms=completed,
    )


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
