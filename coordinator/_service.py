"""The Coordinator gRPC servicer: each RPC checks its request, asks the log, answers.

The rules live in the decision log (`log.interface`), the field checks in `_wire`; a handler
here only wires them together. `_answering` is the one boundary where errors become status codes:
`BadRequest` -> INVALID_ARGUMENT (nothing was recorded), `NotOwner` -> PERMISSION_DENIED (a
gtrid of another identity: nothing was recorded or read), `LogBusy` -> RESOURCE_EXHAUSTED (the
log's queue is full: nothing was queued, ask again later), `LogUnavailable` -> UNAVAILABLE (for
a Commit: the decision may or may not be taken, ask again; Commit is idempotent).

The client calls (Begin, Commit, Abort, Ack, Describe) are coroutines run on the server's
event loop: they check the request there, queue it for the log's writer and await its answer
(`decide_nowait`), so no thread waits while a decision goes to disk. The reads of the log
(GetTransaction, ListTransactions) block on the store and stay synchronous, on a worker thread.

Reads see what the log has made durable: right after Begin (which does not wait for the disk)
GetTransaction may still answer NOT_FOUND for the new gtrid, for a few milliseconds.

There is no lock here: the servicer holds no mutable state. The decision path's only lock is
the log's (see `log.writer`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from twostep.client.tpc import new_gtrid
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from . import _wire
from ._callers import current_caller
from ._metrics import Metrics
from .log import (
    DECIDE_WAIT_S,
    Begun,
    Decision,
    DecisionLog,
    LogBusy,
    LogUnavailable,
    Proposal,
)

__all__ = ["CoordinatorServicer"]

log = logging.getLogger("twostep.coordinator")

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

# A client makes its gtrid's deadline from its estimate of this clock, rounded up to a second:
# how much later than now + max_timeout that deadline may be (ms).
_MINTED_SLACK_MS = 5_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _status_of(rpc: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status a handler's error is answered with (the module docstring's mapping)."""
    if isinstance(exc, _wire.BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, _wire.NotOwner):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, LogBusy):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; ask again later"
    log.warning("decision log unavailable", extra={"rpc": rpc, "error": exc})
    return grpc.StatusCode.UNAVAILABLE, f"{exc}; ask again"


_ANSWERED = (_wire.BadRequest, _wire.NotOwner, LogUnavailable)  # LogBusy is a LogUnavailable


def _answering(handler: _Handler) -> _Handler:
    """`handler` with its errors answered as statuses; a coroutine handler (run on the event
    loop) awaits `context.abort`, a synchronous one (run on a worker thread) has it raise."""
    if inspect.iscoroutinefunction(handler):

        async def answer_on_loop(self: Any, request: Any, context: Any) -> Any:
            try:
                return await handler(self, request, context)
            except _ANSWERED as exc:
                await context.abort(*_status_of(handler.__name__, exc))
            raise AssertionError("unreachable: context.abort raises")

        return functools.wraps(handler)(answer_on_loop)  # type: ignore[return-value]

    def answer(self: Any, request: Any, context: Any) -> Any:
        try:
            return handler(self, request, context)
        except _ANSWERED as exc:
            context.abort(*_status_of(handler.__name__, exc))
        raise AssertionError("unreachable: context.abort raises")

    return functools.wraps(handler)(answer)  # type: ignore[return-value]


class CoordinatorServicer(_pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        decision_log: DecisionLog,
        *,
        cluster_id: str,
        default_timeout_ms: int,
        max_timeout_ms: int,
        clock: Callable[[], int] = _now_ms,
        metrics: Metrics,
    ):
        self._log = decision_log
        self._metrics = metrics
        self._cluster = cluster_id
        self._default_timeout_ms = default_timeout_ms
        self._max_timeout_ms = max_timeout_ms
        self._clock = clock

    @_answering
    async def Begin(
        self, request: _pb.BeginRequest, context: grpc.aio.ServicerContext
    ) -> _pb.BeginResponse:
        count = _wire.begin_count(request)
        timeout_ms = min(request.timeout_ms or self._default_timeout_ms, self._max_timeout_ms)
        now = self._clock()
        deadline = now + timeout_ms
        deadline_s = -(-deadline // 1000)  # the gtrid's deadline is never earlier than the log's
        owner = current_caller().owner  # the Begin caller's gtrids
        begun = [
            Begun(new_gtrid(self._cluster, deadline_s, owner=owner), now, deadline)
            for _ in range(count)
        ]
        self._log.record_begun(begun)  # not durable on return: presumed abort
        return _pb.BeginResponse(
            transactions=[
                _pb.Started(gtrid=b.gtrid, deadline_unix_ms=deadline, timeout_ms=timeout_ms)
                for b in begun
            ]
        )

    @_answering
    async def Describe(
        self, request: _pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> _pb.DescribeResponse:
        return _pb.DescribeResponse(
            cluster_id=self._cluster,
            max_timeout_ms=self._max_timeout_ms,
            default_timeout_ms=self._default_timeout_ms,
            now_unix_ms=self._clock(),
            owner_tag=current_caller().owner,
        )

    @_answering
    async def Commit(
        self, request: _pb.CommitRequest, context: grpc.aio.ServicerContext
    ) -> _pb.CommitResponse:
        with self._metrics.commit_seconds.time():
            decisions = await self._decided(
                _wire.commit_proposals(request, self._scope(), self._latest_deadline_ms())
            )
        self._metrics.decided(decisions)
        return _pb.CommitResponse(decisions=[_wire.decision_to_pb(d) for d in decisions])

    @_answering
    async def Abort(
        self, request: _pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> _pb.AbortResponse:
        decisions = await self._decided(
            _wire.abort_proposals(request, self._scope(), self._latest_deadline_ms())
        )
        self._metrics.decided(decisions)
        return _pb.AbortResponse(decisions=[_wire.decision_to_pb(d) for d in decisions])

    async def _decided(self, proposals: Sequence[Proposal]) -> list[Decision]:
        """The log's decisions, awaited on the event loop while the writer makes them durable
        (no thread waits for them); `LogUnavailable` when not confirmed in `DECIDE_WAIT_S`."""
        durable = asyncio.wrap_future(self._log.decide_nowait(proposals))
        try:
            return await asyncio.wait_for(durable, DECIDE_WAIT_S)
        except TimeoutError as exc:
            raise LogUnavailable("the decision log did not confirm in time") from exc

    def _scope(self) -> _wire.Scope:
        """The gtrids this call's caller may name (`_wire.gtrid_of` applies the rule)."""
        return _wire.Scope(self._cluster, current_caller())

    def _latest_deadline_ms(self) -> int:
        """The latest deadline a gtrid of this coordinator can have now (by its clock)."""
        return self._clock() + self._max_timeout_ms + _MINTED_SLACK_MS

    @_answering
    async def Ack(
        self, request: _pb.AckRequest, context: grpc.aio.ServicerContext
    ) -> _pb.AckResponse:
        self._log.record_acks(_wire.acks(request, self._scope()))
        return _pb.AckResponse()

    @_answering
    def GetTransaction(
        self, request: _pb.GetTransactionRequest, context: grpc.ServicerContext
    ) -> _pb.Transaction:
        info = _wire.gtrid_of(request.gtrid, self._scope())
        record = self._log.get(info.gtrid)
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no transaction {info.gtrid} in the log")
        return _wire.transaction_to_pb(record)

    @_answering
    def ListTransactions(
        self, request: _pb.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> _pb.ListTransactionsResponse:
        records = self._log.list_transactions(_wire.list_query(request, self._clock()))
        return _pb.ListTransactionsResponse(
            transactions=[_wire.transaction_to_pb(r) for r in records]
        )
