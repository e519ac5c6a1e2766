"""The client side of the coordinator's gRPC contract: one channel per address per process.

This module is the one place where grpc errors become twostep's (`CoordinatorUnavailable`);
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

from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from ._errors import CoordinatorUnavailable

__all__ = ["BranchInfo", "CoordinatorClient", "Decided", "client_for"]

log = logging.getLogger("twostep.client")

COMMITTED = _pb.TRANSACTION_STATE_COMMITTED
ABORTED = _pb.TRANSACTION_STATE_ABORTED

# Status codes after which a Commit may or may not have reached the coordinator: ask again.
# Anything else (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) means the request was refused whole.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True)
class BranchInfo:
    resource: str
    dialect: str
    session_id: int = 0

    def to_pb(self) -> _pb.Branch:
        # The branch qualifier is the resource name (see _xid).
        return _pb.Branch(
            resource=self.resource,
            bqual=self.resource,
            dialect=self.dialect,
            session_id=self.session_id,
        )


@dataclass(frozen=True)
class Decided:
    committed: bool
    reason: str


class CoordinatorClient:
    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._stub = _pb_grpc.CoordinatorStub(self._channel)
        # Best-effort messages (Ack, Abort) waiting for the background sender.
        self._outbox: queue.SimpleQueue[_pb.AckItem | _pb.AbortItem] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()  # guards starting the sender thread once

    # -- calls the transaction waits for -----------------------------------------------------

    def begin(self, timeout_s: float, *, rpc_timeout: float) -> tuple[str, int]:
        """A new gtrid and its deadline (unix ms) or `CoordinatorUnavailable`."""
        request = _pb.BeginRequest(timeout_ms=max(1, int(timeout_s * 1000)), count=1)
        try:
            reply = self._stub.Begin(request, timeout=rpc_timeout)
        except grpc.RpcError as exc:
            raise CoordinatorUnavailable(
                f"coordinator {self.address} did not start the transaction "
                f"({exc.code().name}: {exc.details()}); nothing was committed"
            ) from exc
        started = reply.transactions[0]
        return started.gtrid, started.deadline_unix_ms

    def reachable(self, within: float) -> bool:
        """Whether a connection to the coordinator is up (or comes up within `within` s).

        Checked right before Commit: if it is down, Commit was certainly never sent and the
        client may still roll back; once Commit is sent, only the coordinator decides.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=within)
        except grpc.FutureTimeoutError:
            return False
        return True

    def commit(self, gtrid: str, branches: Sequence[BranchInfo], *, rpc_timeout: float) -> Decided:
        """One Commit attempt; raises `grpc.RpcError` (check its code against RETRYABLE)."""
        item = _pb.CommitItem(gtrid=gtrid, branches=[b.to_pb() for b in branches])
        reply = self._stub.Commit(_pb.CommitRequest(transactions=[item]), timeout=rpc_timeout)
        return _decided(reply.decisions[0])

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


def _decided(decision: _pb.Decision) -> Decided:
    if decision.state == COMMITTED:
        return Decided(True, decision.reason)
    if decision.state == ABORTED:
        return Decided(False, decision.reason)
    raise CoordinatorUnavailable(f"coordinator answered an undecided state for {decision.gtrid}")


_clients: dict[str, CoordinatorClient] = {}
_clients_lock = threading.Lock()  # guards _clients


def client_for(address: str) -> CoordinatorClient:
    """The process-wide client of one coordinator address (channels are costly to build)."""
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = CoordinatorClient(address)
        return client
