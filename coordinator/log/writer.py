"""Group commit for a store whose writes go through one writer thread (`postgresql` uses it).

Callers queue `Request`s; the writer thread takes whatever is queued (up to `max_batch` items),
hands the batch to the store's `apply`, which writes all of it in one transaction and commits
once, and only then resolves the futures of the callers that wait (decisions, notes,
resolutions, prunes). Begins and Acks are queued and not waited for; a batch of only those
is `redone_if_lost` and may be committed without waiting for the disk (presumed abort and
recovery redo them). A failed batch answers every waiting caller `LogUnavailable` (nothing in
it was recorded) and the thread goes on with the next one.

The embedded store (`sqlite`) keeps the same rules with its own copy of this loop; it is to
move onto this module once its bounded queue (another change in flight) has landed.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .interface import Ack, Begun, LogUnavailable, Note, Proposal, Resolution
from .sqlite import WriterStats

__all__ = ["DECIDE_WAIT_S", "GroupCommitWriter", "Request", "redone_if_lost"]

log = logging.getLogger("twostep.coordinator.log")

DECIDE_WAIT_S = 60.0  # a decision not confirmed by then is reported as unavailable: ask again


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

    def __post_init__(self) -> None:
        self.size = len(self.begun) + len(self.proposals) + len(self.acks) + len(self.notes)
        self.size += self.resolution is not None
        self.size += self.prune[1] if self.prune else 0


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
    """The queue and the writer thread of one store (see the module docstring)."""

    def __init__(self, apply: Apply, *, max_batch: int, name: str):
        self._apply = apply
        self._max_batch = max_batch
        # Lock order: _submit_lock, then _stats_lock; neither is held while a batch is written.
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # guards _closed and the queue's end: no request
        self._closed = False  # is queued after _STOP, so none is left unanswered
        self._stats_lock = threading.Lock()
        self._stats = WriterStats(0, 0, 0, 0, 0)
        self._thread = threading.Thread(target=self._write_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: Request) -> None:
        """Queue `request`; `LogUnavailable` once closed."""
        with self._submit_lock:
            if self._closed:
                raise LogUnavailable("the decision log is closed")
            self._queue.put(request)
            with self._stats_lock:
                self._stats = dataclasses.replace(self._stats, requests=self._stats.requests + 1)

    def wait(self, request: Request) -> list[Any]:
        """Queue `request` (which has `done`) and return its results once committed."""
        assert request.done is not None
        self.submit(request)
        try:
            return request.done.result(timeout=DECIDE_WAIT_S)
        except TimeoutError as exc:
            raise LogUnavailable("the decision log did not confirm in time") from exc

    def flush(self) -> None:
        """Return once everything queued before the call is committed (or failed)."""
        done: Future[list[Any]] = Future()
        self.submit(Request(done=done))
        done.result()

    def close(self) -> None:
        """Write what is queued, then stop the thread (idempotent)."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def stats(self) -> WriterStats:
        with self._stats_lock:
            return self._stats

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

    def _write_batch(self, batch: list[Request], size: int) -> None:
        try:
            results, synced = self._apply(batch) if size else ([[] for _ in batch], False)
        except Exception as exc:  # the writer thread must survive to answer the next batch
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
                    fsyncs=s.fsyncs + synced,
                )
        for request, answers in zip(batch, results, strict=True):
            if request.done is not None:
                request.done.set_result(answers)
