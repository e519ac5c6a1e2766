"""The Coordinator gRPC servicer: each RPC checks its request, asks the log, answers.

The rules live in the decision log (`log.interface`), the field checks in `_wire`; a handler
here only wires them together. `_answering` is the one boundary where errors become status codes:
`BadRequest` -> INVALID_ARGUMENT (nothing was recorded), `NotOwner` -> PERMISSION_DENIED (a
gtrid of another identity: nothing was recorded or read), `LogBusy` -> RESOURCE_EXHAUSTED (the
log's queue is full: nothing was queued, ask again later), `LogUnavailable` -> UNAVAILABLE (for
a Commit: the decision may or may not be taken, ask again; Commit is idempotent).

Reads see what the log has made durable: right after Begin (which does not wait for the disk)
GetTransaction may still answer NOT_FOUND for the new gtrid, for a few milliseconds.

There is no lock here: the servicer holds no mutable state. The decision path's only lock is
the log's (see `log.writer`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from twostep.client.tpc import new_gtrid
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from . import _wire
from ._callers import current_caller
from ._metrics import Metrics
from .log import Begun, DecisionLog, LogBusy, LogUnavailable

__all__ = ["CoordinatorServicer"]

log = logging.getLogger("twostep.coordinator")

_Reply = TypeVar("_Reply")

# A client makes its gtrid's deadline from its estimate of this clock, rounded up to a second:
# how much later than now + max_timeout that deadline may be (ms).
_MINTED_SLACK_MS = 5_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _answering(
    handler: Callable[[Any, Any, grpc.ServicerContext], _Reply],
) -> Callable[[Any, Any, grpc.ServicerContext], _Reply]:
    @functools.wraps(handler)
    def answer(self: Any, request: Any, context: grpc.ServicerContext) -> _Reply:
        try:
            return handler(self, request, context)
        except _wire.BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except _wire.NotOwner as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except LogBusy as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; ask again later")
        except LogUnavailable as exc:
            log.warning("decision log unavailable", extra={"rpc": handler.__name__, "error": exc})
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; ask again")
        raise AssertionError("unreachable: context.abort raises")

    return answer


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
    def Begin(self, request: _pb.BeginRequest, context: grpc.ServicerContext) -> _pb.BeginResponse:
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
    def Describe(
        self, request: _pb.DescribeRequest, context: grpc.ServicerContext
    ) -> _pb.DescribeResponse:
        return _pb.DescribeResponse(
            cluster_id=self._cluster,
            max_timeout_ms=self._max_timeout_ms,
            default_timeout_ms=self._default_timeout_ms,
            now_unix_ms=self._clock(),
            owner_tag=current_caller().owner,
        )

    @_answering
    def Commit(
        self, request: _pb.CommitRequest, context: grpc.ServicerContext
    ) -> _pb.CommitResponse:
        with self._metrics.commit_seconds.time():
            decisions = self._log.decide(
                _wire.commit_proposals(request, self._scope(), self._latest_deadline_ms())
            )
        self._metrics.decided(decisions)
        return _pb.CommitResponse(decisions=[_wire.decision_to_pb(d) for d in decisions])

    @_answering
    def Abort(self, request: _pb.AbortRequest, context: grpc.ServicerContext) -> _pb.AbortResponse:
        decisions = self._log.decide(
            _wire.abort_proposals(request, self._scope(), self._latest_deadline_ms())
        )
        self._metrics.decided(decisions)
        return _pb.AbortResponse(decisions=[_wire.decision_to_pb(d) for d in decisions])

    def _scope(self) -> _wire.Scope:
        """The gtrids this call's caller may name (`_wire.gtrid_of` applies the rule)."""
        return _wire.Scope(self._cluster, current_caller())

    def _latest_deadline_ms(self) -> int:
        """The latest deadline a gtrid of this coordinator can have now (by its clock)."""
        return self._clock() + self._max_timeout_ms + _MINTED_SLACK_MS

    @_answering
    def Ack(self, request: _pb.AckRequest, context: grpc.ServicerContext) -> _pb.AckResponse:
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
