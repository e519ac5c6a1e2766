"""Group commit through one writer thread, shared by both stores (`sqlite`, `postgresql`).

Callers queue `Request`s; the writer thread takes whatever is queued (up to `max_batch` items),
hands the batch to the store's `apply`, which writes all of it in one transaction and commits
once, and only then resolves the futures of the callers that wait (decisions, notes,
resolutions, prunes). Begins and Acks are queued and not waited for; a batch of only those
is `redone_if_lost` and may be committed without waiting for the disk (presumed abort and
recovery redo them). A failed batch answers every waiting caller `LogUnavailable` (nothing in
it was recorded) and the thread goes on with the next one.

The queue is bounded: what the wire asks for (Begins, decisions, Acks: `bounded=True`) is
refused with `LogBusy` (nothing queued) once `max_queued` rows wait for the writer, so a flood
of Begins costs a bounded amount of memory and the caller is told to come back (the servicer
answers RESOURCE_EXHAUSTED), instead of every caller waiting behind a queue that only grows.
A proposal counts as one row per branch it carries (at least one). Begins and Acks (nobody
waits for them) may fill only an eighth of the queue (`_UNWAITED_SHARE`), so a flood of
Begins leaves room for the decisions clients wait for, and a Commit waits behind few of them.
Recovery's and the operator's writes (notes, resolutions, prunes) are never refused: they are
few and they are how the log gets finished work out of the way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .interface import Ack, Begun, LogBusy, LogUnavailable, Note, Proposal, Resolution

__all__ = [
    "DECIDE_WAIT_S",
    "GroupCommitWriter",
    "Request",
    "WriterStats",
    "redone_if_lost",
]

log = logging.getLogger("twostep.coordinator.log")

DECIDE_WAIT_S = 60.0  # a decision not confirmed by then is reported as unavailable: ask again
#: The queue holds this many full batches of the wire's rows before it refuses more: enough
#: that a burst waits its turn, few enough that the last one in waits seconds, not minutes.
_QUEUED_BATCHES = 20
#: Begins and Acks may fill 1/this of the queue: a Commit never waits behind more of them than
#: a few batches' worth (measured: a Begin flood at half the queue kept Commits 1-2 s waiting).
_UNWAITED_SHARE = 8


@dataclass(frozen=True)
class WriterStats:
    """Counters of the writer, for tests, benchmarks and the shutdown line."""

    requests: int  # calls queued for the writer (record_begun, decide, record_acks, flush)
    items: int  # rows those calls carried
    batches: int  # transactions committed
    failed_batches: int
    fsyncs: int  # of those, committed waiting for the disk (not `redone_if_lost`)

    @property
    def items_per_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class Request:
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


def redone_if_lost(request: Request) -> bool:
    """Whether losing the request's rows to a power cut is harmless: Begins and Acks that
    nobody waits for (presumed abort and recovery redo them)."""
    return request.done is None and not (
        request.proposals or request.notes or request.resolution or request.prune
    )


#: `apply(batch)` writes a batch in one transaction: the results of each request, in order,
#: and whether its commit waited for the disk. It raises when nothing was recorded.
Apply = Callable[[list[Request]], tuple[list[list[Any]], bool]]

_STOP = Request()  # queued by close(): the writer exits after what came before it


class GroupCommitWriter:
    """The queue and the writer thread of one store (see the module docstring).

    `max_batch`: items per transaction at most; `max_queued`: rows of bounded requests that
    may wait (default `_QUEUED_BATCHES` batches); `name`: the thread's.
    """

    def __init__(self, apply: Apply, *, max_batch: int, max_queued: int | None = None, name: str):
        self._apply = apply
        self._max_batch = max_batch
        self._max_queued = max_queued or _QUEUED_BATCHES * max_batch
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        # Guards _closed and the queue's end (no request is queued after _STOP, so none is
        # left unanswered), _queued_rows and the counters; never held while a batch is written.
        self._lock = threading.Lock()
        self._closed = False
        self._queued_rows = 0  # the wire's rows queued and not yet taken by the writer
        self._requests = self._items = self._batches = self._failed = self._fsyncs = 0
        self._thread = threading.Thread(target=self._write_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: Request, *, bounded: bool = False) -> None:
        """Queue `request`. Raises `LogUnavailable` once closed; `bounded` (one of the wire's):
        `LogBusy`, and nothing queued, when the rows waiting and its own would be more than
        `max_queued` (an `_UNWAITED_SHARE` of it for a request nobody waits for)."""
        with self._lock:
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
            self._requests += 1

    def pending(self, request: Request, *, bounded: bool = False) -> Future[list[Any]]:
        """Queue `request` (which has `done`) and return `done`: its results once committed,
        or `LogUnavailable` when the write failed. Raises like `submit`. The future cannot be
        cancelled: a caller that stops waiting leaves the writer its answer to set."""
        assert request.done is not None
        request.done.set_running_or_notify_cancel()
        self.submit(request, bounded=bounded)
        return request.done

    def wait(self, request: Request, *, bounded: bool = False) -> list[Any]:
        """`pending(request)`'s results, waited for; `LogUnavailable` when not confirmed in
        `DECIDE_WAIT_S`."""
        try:
            return self.pending(request, bounded=bounded).result(timeout=DECIDE_WAIT_S)
        except TimeoutError as exc:
            raise LogUnavailable("the decision log did not confirm in time") from exc

    def flush(self) -> None:
        """Return once everything queued before the call is committed (or failed)."""
        self.pending(Request(done=Future())).result()

    def close(self) -> None:
        """Write what is queued, then stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                self._requests, self._items, self._batches, self._failed, self._fsyncs
            )

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
            with self._lock:
                self._queued_rows -= sum(request.bounded_rows for request in batch)
            self._write_batch(batch, size)

    def _write_batch(self, batch: list[Request], size: int) -> None:
        try:
            results, synced = self._apply(batch) if size else ([[] for _ in batch], False)
        except Exception as exc:  # the writer thread must survive to answer the next batch
            log.error(
                "decision log batch failed, nothing in it was recorded",
                extra={"items": size, "error": f"{type(exc).__name__}: {exc}"},
            )
            with self._lock:
                self._failed += 1
            failure = LogUnavailable(f"the decision log could not write: {exc}")
            for request in batch:
                if request.done is not None:
                    request.done.set_exception(failure)
            return
        if size:
            with self._lock:
                self._items += size
                self._batches += 1
                self._fsyncs += synced
        for request, answers in zip(batch, results, strict=True):
            if request.done is not None:
                request.done.set_result(answers)
