"""Best-effort messages to the coordinator (Ack, Abort), batched on a background thread.

Neither message is needed for correctness: presumed abort and recovery make both redundant
(losing one costs the coordinator a redundant recovery step, never data), so posting one never
blocks the caller. What they cost is calls: a gRPC call costs the coordinator ~250 us of CPU
whatever it carries (docs/design.md §8), and at low load an Ack sent at once goes alone, which
doubles the calls per decision. So an Ack waits up to `ACK_LINGER_S` for others to share its
call (or until `MAX_ITEMS` wait). An Abort leaves at once, with whatever waits: it lets the
coordinator decide ABORT and roll back the branches now instead of at the deadline.

What is still waiting when the interpreter exits is sent then (`atexit`, at most
`EXIT_FLUSH_S` in all, with the calls' own errors logged and dropped as ever); a process killed
or ended by `os._exit` loses it, as a crash would.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from twostep.v1 import coordinator_pb2 as _pb

from . import _fork

__all__ = ["ACK_LINGER_S", "EXIT_FLUSH_S", "FORK_WAIT_S", "MAX_ITEMS", "CoordinatorOutbox"]

#: How long an Ack waits for others to share its call (s). At 1 client an Ack call per
#: transaction made 2.0 calls per decision; with the linger, coordinator CPU per transfer
#: (bench transfer, cpu.py) fell 2.10 -> 1.47 ms at 1 client and 1.24 -> 0.72 ms at 8.
ACK_LINGER_S = 0.05
#: The most items one batch carries (the coordinator takes at most 1000 per call).
MAX_ITEMS = 500
#: How long interpreter exit waits for the last messages to be sent, all outboxes together (s).
EXIT_FLUSH_S = 2.0
#: How long a fork waits for the outboxes' calls in flight to end, all together (s).
FORK_WAIT_S = 1.0

Item = _pb.AckItem | _pb.AbortItem
#: Sends one batch: the Aborts first (an Ack may follow its own Abort), then the Acks.
Send = Callable[[Sequence[_pb.AbortItem], Sequence[_pb.AckItem]], None]


class CoordinatorOutbox:
    """A queue of Acks and Aborts and the daemon thread that sends it with `send`."""

    def __init__(self, send: Send, *, name: str = "twostep-coordinator-outbox"):
        self._send = send
        self._name = name
        self._linger_s = ACK_LINGER_S  # read now, so that a test may change it per outbox
        # Items, and Events that ask for everything before them to be sent now (`flush`).
        self._queue: queue.SimpleQueue[Item | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards starting the thread once
        self._sending = threading.Lock()  # held while a batch is on the wire (`_pause_sends`)

    def post(self, item: Item) -> None:
        """Queue `item`; never waits."""
        self._queue.put(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
                    _live.add(self)

    def flush(self, timeout: float) -> bool:
        """Send what was posted before this call now, not waiting out the linger. True once
        it was sent (or dropped by a failed call), False if `timeout` (s) passed first."""
        return self._ask_flush().wait(timeout)

    def _ask_flush(self) -> threading.Event:
        done = threading.Event()
        if self._thread is None:
            done.set()  # nothing was ever posted
        else:
            self._queue.put(done)
        return done

    def _run(self) -> None:
        while True:
            items, flushes = self._gather()
            try:
                if items:
                    aborts = [i for i in items if isinstance(i, _pb.AbortItem)]
                    with self._sending:
                        self._send(aborts, [i for i in items if isinstance(i, _pb.AckItem)])
            finally:
                for done in flushes:
                    done.set()

    def _gather(self) -> tuple[list[Item], list[threading.Event]]:
        """The next batch: waits for a first item, then for more while the first Ack lingers;
        an Abort or a flush request ends the wait (what is queued by then still goes)."""
        items: list[Item] = []
        flushes: list[threading.Event] = []
        entry = self._queue.get()
        linger_until = time.monotonic() + self._linger_s
        while True:
            if isinstance(entry, threading.Event):
                flushes.append(entry)
                linger_until = 0.0
            else:
                items.append(entry)
                if isinstance(entry, _pb.AbortItem):
                    linger_until = 0.0
            if len(items) >= MAX_ITEMS:
                return items, flushes
            wait = linger_until - time.monotonic()
            try:
                entry = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return items, flushes


# Outboxes whose thread runs in this process, flushed at exit.
_live: weakref.WeakSet[CoordinatorOutbox] = weakref.WeakSet()


# Sends held back while this process forks (`_pause_sends`).
_paused: list[threading.Lock] = []


def _pause_sends() -> None:
    """Before a fork: wait (at most `FORK_WAIT_S` in all) for the outboxes' calls in flight,
    and start no new one until the fork is done. A thread inside a gRPC call at the fork makes
    grpc skip its fork handlers ("Other threads are currently calling into gRPC"); measured
    (grpcio 1.85): the first call of 5 to 7 children in 20 then failed UNAVAILABLE ("Stream
    removed (sendmsg: Wrong file descriptor generation)"), and 1 or 2 never answered."""
    give_up = time.monotonic() + FORK_WAIT_S
    for outbox in list(_live):
        if outbox._sending.acquire(timeout=max(0.0, give_up - time.monotonic())):
            _paused.append(outbox._sending)


def _resume_sends() -> None:
    while _paused:
        _paused.pop().release()


os.register_at_fork(before=_pause_sends, after_in_parent=_resume_sends)


@_fork.in_child
def _forget_outboxes() -> None:
    """In a forked child the parent's outbox threads do not run: nothing to wait for at exit,
    and the locks held back for the fork are not the child's to release."""
    global _live, _paused
    _live = weakref.WeakSet()
    _paused = []


@atexit.register
def _flush_at_exit() -> None:
    give_up = time.monotonic() + EXIT_FLUSH_S
    for done in [outbox._ask_flush() for outbox in list(_live)]:
        done.wait(max(0.0, give_up - time.monotonic()))
