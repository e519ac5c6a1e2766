"""Commit requests of concurrent transactions of one process, sent together.

A Python gRPC call costs the coordinator ~250 us of CPU whatever it carries, while its log
decides a batch with one fsync (docs/design.md §8), so the wire contract lets one Commit carry
many transactions. `CommitBatch.commit()` sends at once when no Commit is in flight (no added
latency at low load); items that arrive while one is in flight wait and leave together in the
next call. The caller whose item starts a call sends it (leader/follower: no extra thread);
when its call returns it hands the next batch to one of the waiting callers.

Each caller gets the answer for its own gtrid, or the call's error: a refusal applies to the
whole call (the coordinator validates a request whole), and a lost reply leaves every item of
the call undecided, to be asked again by its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from twostep.v1 import coordinator_pb2 as _pb

__all__ = ["CommitBatch"]

MAX_ITEMS = 1000  # the coordinator takes at most this many transactions in one call
MAX_CALL_BRANCHES = 4096  # ... and at most this many branches in all (coordinator.proto)

Send = Callable[[Sequence[_pb.CommitItem], float], _pb.CommitResponse]


@dataclass(eq=False)
class _Waiter:
    item: _pb.CommitItem
    timeout: float
    #: Set when `decisions` or `error` is in, or when this caller must send the next batch.
    ready: threading.Event = field(default_factory=threading.Event)
    promoted: bool = False
    decisions: list[_pb.Decision] | None = None
    error: BaseException | None = None


class CommitBatch:
    """Coalesces `send(items, timeout)` calls of concurrent callers."""

    def __init__(self, send: Send):
        self._send = send
        # Guards _queue and _in_flight; never held while a call is on the wire.
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._in_flight = False

    def commit(self, item: _pb.CommitItem, timeout: float) -> list[_pb.Decision]:
        """The reply's decisions for `item.gtrid` (normally one; the caller judges them).

        Raises the call's `grpc.RpcError`. `timeout` (s) bounds the call that carries it.
        """
        waiter = _Waiter(item, timeout)
        with self._lock:
            self._queue.append(waiter)
            lead = not self._in_flight
            self._in_flight = True
        if not lead:
            waiter.ready.wait()
        if lead or waiter.promoted:
            self._lead()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.decisions is not None
        return waiter.decisions

    def _lead(self) -> None:
        """Send one batch (the leader's own item is in it), then hand over or stand down."""
        with self._lock:
            cut = _fitting(self._queue)
            batch, self._queue[:] = self._queue[:cut], self._queue[cut:]
        try:
            reply = self._send([w.item for w in batch], max(w.timeout for w in batch))
        except grpc.RpcError as exc:
            for waiter in batch:
                waiter.error = exc
        except BaseException as exc:  # KeyboardInterrupt too: no waiter may wait forever
            for waiter in batch:
                waiter.error = _Interrupted(exc)
            raise
        else:
            for waiter in batch:
                waiter.decisions = [d for d in reply.decisions if d.gtrid == waiter.item.gtrid]
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._in_flight = following is not None
                if following is not None:
                    following.promoted = True
                    following.ready.set()
            for waiter in batch:
                waiter.ready.set()


def _fitting(queue: Sequence[_Waiter]) -> int:
    """How many of the first waiters one call may carry (at least one: a transaction alone
    is checked by the coordinator's per-transaction limit)."""
    branches = 0
    for i, waiter in enumerate(queue[:MAX_ITEMS]):
        branches += len(waiter.item.branches)
        if branches > MAX_CALL_BRANCHES and i:
            return i
    return min(len(queue), MAX_ITEMS)


class _Interrupted(grpc.RpcError):
    """The call carrying this item was interrupted in another caller's thread."""

    def __init__(self, cause: BaseException):
        super().__init__(f"the Commit call was interrupted: {type(cause).__name__}: {cause}")
        self.__cause__ = cause

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return str(self)
