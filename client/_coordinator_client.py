"""The client side of the coordinator's gRPC contract: one channel per address per process.

This module is the one place where grpc errors become twostep's (`CoordinatorUnavailable`);
calls that wait for an answer wait for the channel too (`wait_for_ready`, bounded by their
timeout): a channel still backing off from a coordinator that was down would otherwise fail
them at once, though the coordinator is back.
the transaction code asks it questions and gets answers or typed errors. Acks and the Abort
of a transaction that was rolled back before Commit are best-effort and leave on a background
thread in batches: losing one costs the coordinator a redundant recovery step, never data.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc

from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from . import _fork
from ._errors import CoordinatorUnavailable

__all__ = [
    "REFUSED_UNDECIDED",
    "BranchInfo",
    "CoordinatorClient",
    "Decided",
    "Started",
    "client_for",
]

log = logging.getLogger("twostep.client")

_SERVICE = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # its health check name
# Each channel keeps its own connections: from the process-wide pool a child's new channel
# would pick up the parent's connection (grpcio 1.85: "Wrong file descriptor generation").
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

COMMITTED = _pb.TRANSACTION_STATE_COMMITTED
ABORTED = _pb.TRANSACTION_STATE_ABORTED

# Status codes with which a server refuses a request before acting on it (bad request,
# credentials, no such method). Only the answer to a Commit's first attempt may be read so:
# a retry may follow a first attempt that was decided and whose reply was lost.
REFUSED_UNDECIDED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


@dataclass(frozen=True)
class BranchInfo:
    """A branch as the coordinator is told of it."""

    resource: str
    dialect: str
    session_id: int = 0  # MySQL: the owner session's CONNECTION_ID()
    transaction_id: int = 0  # PostgreSQL: the prepared transaction's xid8

    def to_pb(self) -> _pb.Branch:
        # The branch qualifier is the resource name (see tpc.xid).
        return _pb.Branch(
            resource=self.resource,
            bqual=self.resource,
            dialect=self.dialect,
            session_id=self.session_id,
            transaction_id=self.transaction_id,
        )


@dataclass(frozen=True)
class Started:
    """A Begin's answer: the gtrid and the lifetime granted (the coordinator's deadline)."""

    gtrid: str
    timeout_s: float


@dataclass(frozen=True)
class Decided:
    committed: bool
    reason: str


class CoordinatorClient:
    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._health = _health_pb2_grpc.HealthStub(self._channel)
        self._stub = _pb_grpc.CoordinatorStub(self._channel)
        # Best-effort messages (Ack, Abort) waiting for the background sender.
        self._outbox: queue.SimpleQueue[_pb.AckItem | _pb.AbortItem] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()  # guards starting the sender thread once

    # -- calls the transaction waits for -----------------------------------------------------

    def begin(
        self, timeout_s: float, branches: Sequence[BranchInfo] = (), *, rpc_timeout: float
    ) -> Started:
        """A new gtrid with `branches` registered, or `CoordinatorUnavailable`."""
        request = _pb.BeginRequest(
            timeout_ms=max(1, int(timeout_s * 1000)),
            count=1,
            branches=[b.to_pb() for b in branches],
        )
        try:
            reply = self._stub.Begin(request, timeout=rpc_timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise CoordinatorUnavailable(
                f"coordinator {self.address} did not start the transaction "
                f"({exc.code().name}: {exc.details()}); nothing was committed"
            ) from exc
        if len(reply.transactions) != 1 or not reply.transactions[0].gtrid:
            raise CoordinatorUnavailable(
                f"coordinator {self.address} answered Begin with {len(reply.transactions)} "
                "transactions instead of one; nothing was committed"
            )
        started = reply.transactions[0]
        # An older coordinator sends no timeout: then the one asked for is the one granted.
        granted_ms = started.timeout_ms or request.timeout_ms
        return Started(started.gtrid, min(granted_ms, request.timeout_ms) / 1000)

    def enlist(self, gtrid: str, branches: Sequence[BranchInfo], *, rpc_timeout: float) -> bool:
        """Register branches before they are prepared: True while the transaction is active;
        False when it is decided or unknown (then it must not be prepared).
        Raises `CoordinatorUnavailable` when the coordinator did not answer."""
        item = _pb.EnlistItem(gtrid=gtrid, branches=[b.to_pb() for b in branches])
        try:
            reply = self._stub.Enlist(
                _pb.EnlistRequest(transactions=[item]), timeout=rpc_timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise CoordinatorUnavailable(
                f"coordinator {self.address} did not register the branches of {gtrid} "
                f"({exc.code().name}: {exc.details()}); nothing was committed"
            ) from exc
        states = [d.state for d in reply.transactions if d.gtrid == gtrid]
        return states == [_pb.TRANSACTION_STATE_ACTIVE]

    def reachable(self, within: float) -> bool:
        """Whether the coordinator answers that it is serving within `within` s.

        Checked right before Commit: if it is down, Commit was certainly never sent and the
        client may still roll back; once Commit is sent, only the coordinator decides.
        A health check on the calling thread, not `grpc.channel_ready_future`: that one leaves
        a connectivity-polling thread inside grpc for up to 0.2 s, and a fork in that window
        crashed the child (SIGSEGV in 1 to 3 of 4 children per run, grpcio 1.85).
        """
        request = _health_pb2.HealthCheckRequest(service=_SERVICE)
        try:
            reply = self._health.Check(request, timeout=within, wait_for_ready=True)
        except grpc.RpcError:
            return False
        return reply.status == _health_pb2.HealthCheckResponse.SERVING

    def commit(
        self, gtrid: str, branches: Sequence[BranchInfo], *, rpc_timeout: float
    ) -> Decided | None:
        """One Commit attempt: the decision, or None when the reply holds no decision for
        `gtrid` (a misbehaving server or proxy: not an answer). Raises `grpc.RpcError`."""
        item = _pb.CommitItem(gtrid=gtrid, branches=[b.to_pb() for b in branches])
        reply = self._stub.Commit(
            _pb.CommitRequest(transactions=[item]), timeout=rpc_timeout, wait_for_ready=True
        )
        decisions = [d for d in reply.decisions if d.gtrid == gtrid]
        if len(reply.decisions) != 1 or len(decisions) != 1:
            return None
        return _decided(decisions[0])

    # -- best effort, batched in the background ---------------------------------------------

    def ack(self, gtrid: str, *, one_phase_commit: bool = False) -> None:
        self._post(_pb.AckItem(gtrid=gtrid, one_phase_commit=one_phase_commit))

    def abort(self, gtrid: str, reason: str, branches: Sequence[BranchInfo]) -> None:
        self._post(
            _pb.AbortItem(gtrid=gtrid, reason=reason, branches=[b.to_pb() for b in branches])
        )

    def _post(self, item: _pb.AckItem | _pb.AbortItem) -> None:
        self._outbox.put(item)
        if self._sender is None:
            with self._sender_lock:
                if self._sender is None:
                    self._sender = threading.Thread(
                        target=self._send_forever, name="twostep-coordinator-outbox", daemon=True
                    )
                    self._sender.start()

    def _send_forever(self) -> None:
        while True:
            batch = [self._outbox.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            acks = [i for i in batch if isinstance(i, _pb.AckItem)]
            aborts = [i for i in batch if isinstance(i, _pb.AbortItem)]
            try:
                if aborts:
                    self._stub.Abort(_pb.AbortRequest(transactions=aborts), timeout=5)
                if acks:
                    self._stub.Ack(_pb.AckRequest(transactions=acks), timeout=5)
            except grpc.RpcError as exc:
                # Presumed abort and recovery make both messages redundant: drop, don't block.
                log.info(
                    "coordinator outbox dropped messages",
                    extra={
                        "coordinator": self.address,
                        "acks": len(acks),
                        "aborts": len(aborts),
                        "status": exc.code().name,
                    },
                )


def _decided(decision: _pb.Decision) -> Decided | None:
    if decision.state == COMMITTED:
        return Decided(True, decision.reason)
    if decision.state == ABORTED:
        return Decided(False, decision.reason)
    return None  # ACTIVE, UNSPECIFIED, unknown numbers: no decision


_clients: dict[str, CoordinatorClient] = {}
_clients_lock = threading.Lock()  # guards _clients


@_fork.in_child
def _forget_clients() -> None:
    """In a forked child: the parent's channels and outbox threads are not ours; dropped
    unclosed (measured: the parent keeps its connection), new ones are made on first use."""
    global _clients, _clients_lock
    _clients, _clients_lock = {}, threading.Lock()


def client_for(address: str) -> CoordinatorClient:
    """The process-wide client of one coordinator address (channels are costly to build)."""
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = CoordinatorClient(address)
        return client
