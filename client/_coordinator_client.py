"""The client side of the coordinator's gRPC contract: one channel per address per process.

On a transaction's hot path the client sends the coordinator one call, Commit (docs/design.md
§2): it makes gtrids itself (`ts2`) from the coordinator's description (cluster id, maximum
lifetime, clock), fetched once and kept for `_DESCRIPTION_TTL_S`; Commits of concurrent
transactions share calls (`_commit_batch`); Acks and the Aborts of transactions rolled back
before Commit are best-effort and leave on a background thread in batches, Acks after a short
linger (`_coordinator_outbox`; losing one costs the coordinator a redundant recovery step,
never data).

This module is the one place where grpc errors become twostep's (`CoordinatorUnavailable`);
calls that wait for an answer wait for the channel too (`wait_for_ready`, bounded by their
timeout): a channel still backing off from a coordinator that was down would otherwise fail
them at once, though the coordinator is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc import _common as _grpc_common
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc

from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from . import _fork
from ._channel import ChannelConfig
from ._commit_batch import CommitBatch
from ._coordinator_outbox import CoordinatorOutbox
from ._errors import CoordinatorUnavailable

__all__ = [
    "REFUSED_UNDECIDED",
    "BranchInfo",
    "CoordinatorClient",
    "Decided",
    "Description",
    "client_for",
]

log = logging.getLogger("twostep.client")

_SERVICE = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # its health check name
# Each channel keeps its own connections: from the process-wide pool a child's new channel
# would pick up the parent's connection (grpcio 1.85: "Wrong file descriptor generation").
#
# A channel that lost its coordinator retries the connection with gRPC's backoff, which grows
# to 120 s by default: a Commit asked again after a coordinator restart (or the next
# transaction's first call) would wait out a backoff begun during the outage, and could end
# in OutcomeUnknown though the coordinator had been back for seconds. Capped at
# `_RECONNECT_MAX_MS`, a coordinator that is back is reached within about that long; the
# cost is one connection attempt per interval while it is down. (Not
# grpc.min_reconnect_backoff_ms: grpc also takes it as the minimum connect timeout, so a
# handshake slower than it, over TLS or a long link, could never complete.)
_RECONNECT_INITIAL_MS = 100
_RECONNECT_MAX_MS = 1000
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", _RECONNECT_INITIAL_MS),
    ("grpc.max_reconnect_backoff_ms", _RECONNECT_MAX_MS),
]
# How long a coordinator's description is used before it is asked again (s): its cluster id
# never changes; a new max_timeout or a drifting clock is picked up within this.
_DESCRIPTION_TTL_S = 60.0
#: The longest reason the coordinator takes (its `_wire.MAX_REASON_CHARS`).
MAX_REASON_CHARS = 1000

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
    bqual: str  # the resource name, for MySQL with "#<session id>" (see tpc.xid)
    dialect: str
    session_id: int = 0  # MySQL: the owner session's CONNECTION_ID()
    transaction_id: int = 0  # PostgreSQL: the prepared transaction's xid8

    def to_pb(self) -> _pb.Branch:
        return _pb.Branch(
            resource=self.resource,
            bqual=self.bqual,
            dialect=self.dialect,
            session_id=self.session_id,
            transaction_id=self.transaction_id,
        )


@dataclass(frozen=True)
class Description:
    """What a client needs to make gtrids for a coordinator (its Describe answer)."""

    cluster: str
    max_timeout_s: float
    #: The coordinator's clock minus this process's (s), estimated from one round trip.
    clock_offset_s: float
    fetched_at: float  # time.monotonic() of the answer
    #: This process's owner tag as the coordinator identifies it (by the channel's token or
    #: certificate), for the gtrids it makes; "" from a coordinator older than owner tags.
    owner: str = ""


@dataclass(frozen=True)
class Decided:
    committed: bool
    reason: str


class CoordinatorClient:
    def __init__(self, address: str, config: ChannelConfig | None = None):
        """`config`: TLS and the client token (default: none, plain text)."""
        self.address = address
        config = config or ChannelConfig()
        self._metadata = config.metadata()  # the client token, on every call
        self._channel = config.open(address, options=_CHANNEL_OPTIONS)
        self._health = _health_pb2_grpc.HealthStub(self._channel)
        self._stub = _pb_grpc.CoordinatorStub(self._channel)
        self._commits = CommitBatch(self._send_commits)
        self._description: Description | None = None
        self._describe_lock = threading.Lock()  # one Describe call at a time
        self._outbox = CoordinatorOutbox(self._send_outbox)  # Acks and Aborts, best effort

    # -- calls the transaction waits for -----------------------------------------------------

    def description(self, *, rpc_timeout: float) -> Description:
        """The coordinator's description: the one known, while it is younger than
        `_DESCRIPTION_TTL_S` and the channel has stayed connected (another coordinator may
        answer at the address after a reconnect); else asked anew.

        Raises `CoordinatorUnavailable` when it cannot be had (then nothing was committed).
        """
        known = self._fresh_description()
        if known is not None:
            return known
        with self._describe_lock:
            known = self._fresh_description()
            if known is not None:
                return known
            asked = time.time()
            try:
                reply = self._stub.Describe(
                    _pb.DescribeRequest(),
                    metadata=self._metadata,
                    timeout=rpc_timeout,
                    wait_for_ready=True,
                )
            except grpc.RpcError as exc:
                raise CoordinatorUnavailable(
                    f"coordinator {self.address} could not be asked for its cluster id "
                    f"({exc.code().name}: {exc.details()}); nothing was committed"
                ) from exc
            answered = time.time()
            self._description = Description(
                reply.cluster_id,
                reply.max_timeout_ms / 1000,
                reply.now_unix_ms / 1000 - (asked + answered) / 2,
                time.monotonic(),
                reply.owner_tag,
            )
            return self._description

    def _fresh_description(self) -> Description | None:
        known = self._description
        if known is None or time.monotonic() - known.fetched_at >= _DESCRIPTION_TTL_S:
            return None
        return known if self._connected() else None

    def forget_description(self) -> None:
        """Ask the coordinator anew next time (it refused a gtrid made from this one)."""
        self._description = None

    def reachable(self, within: float) -> bool:
        """Whether the channel is connected, or the coordinator answers that it is serving
        within `within` s.

        Checked right before Commit: if it is down, Commit was certainly never sent and the
        client may still roll back; once Commit is sent, only the coordinator decides. A
        connected channel costs no round trip (a coordinator that fails right after costs an
        `OutcomeUnknown` instead of a rollback: never a wrong answer). Otherwise a health check
        on the calling thread, not `grpc.channel_ready_future`: that one leaves a
        connectivity-polling thread inside grpc for up to 0.2 s, and a fork in that window
        crashed the child (SIGSEGV in 1 to 3 of 4 children per run, grpcio 1.85).
        """
        if self._connected():
            return True
        request = _health_pb2.HealthCheckRequest(service=_SERVICE)
        try:
            reply = self._health.Check(request, timeout=within, wait_for_ready=True)
        except grpc.RpcError:
            return False
        return reply.status == _health_pb2.HealthCheckResponse.SERVING

    def _connected(self) -> bool:
        """Whether the channel is connected now, asked of grpc without I/O and without the
        polling thread `channel_ready_future` starts (grpc's own private call; False if it
        is not there)."""
        try:
            state = self._channel._channel.check_connectivity_state(False)  # type: ignore[attr-defined]
            connectivity = _grpc_common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY[state]
        except (AttributeError, KeyError):
            return False
        return bool(connectivity is grpc.ChannelConnectivity.READY)

    def commit(
        self, gtrid: str, branches: Sequence[BranchInfo], *, rpc_timeout: float
    ) -> Decided | None:
        """One Commit attempt (sharing a call with concurrent transactions' attempts): the
        decision, or None when the reply holds no decision for `gtrid`, or two (a misbehaving
        server or proxy: not an answer). Raises `grpc.RpcError`."""
        item = _pb.CommitItem(gtrid=gtrid, branches=[b.to_pb() for b in branches])
        decisions = self._commits.commit(item, rpc_timeout)
        return _decided(decisions[0]) if len(decisions) == 1 else None

    def _send_commits(self, items: Sequence[_pb.CommitItem], timeout: float) -> _pb.CommitResponse:
        request = _pb.CommitRequest(transactions=list(items))
        return self._stub.Commit(
            request, metadata=self._metadata, timeout=timeout, wait_for_ready=True
        )

    # -- best effort, batched in the background (`_coordinator_outbox`) -----------------------

    def ack(self, gtrid: str, *, one_phase_commit: bool = False) -> None:
        self._outbox.post(_pb.AckItem(gtrid=gtrid, one_phase_commit=one_phase_commit))

    def abort(self, gtrid: str, reason: str, branches: Sequence[BranchInfo]) -> None:
        """Tell the coordinator the transaction was rolled back; `reason` as `bounded_reason`
        makes it (an exception's message may be anything)."""
        self._outbox.post(
            _pb.AbortItem(
                gtrid=gtrid, reason=bounded_reason(reason), branches=[b.to_pb() for b in branches]
            )
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Send the Acks and Aborts posted so far now, without their linger; False if that
        took longer than `timeout` (s). (Tests, and anyone who must see them recorded.)"""
        return self._outbox.flush(timeout)

    def _send_outbox(self, aborts: Sequence[_pb.AbortItem], acks: Sequence[_pb.AckItem]) -> None:
        try:
            if aborts:
                abort_request = _pb.AbortRequest(transactions=aborts)
                self._stub.Abort(abort_request, metadata=self._metadata, timeout=5)
            if acks:
                ack_request = _pb.AckRequest(transactions=acks)
                self._stub.Ack(ack_request, metadata=self._metadata, timeout=5)
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


def bounded_reason(text: str) -> str:
    """`text` as the coordinator takes a reason: valid UTF-8 (a lone surrogate, as from a
    file name, becomes "?") of at most `MAX_REASON_CHARS` characters (the rest cut, "…")."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return text


_clients: dict[tuple[str, ChannelConfig], CoordinatorClient] = {}
_clients_lock = threading.Lock()  # guards _clients


@_fork.in_child
def _forget_clients() -> None:
    """In a forked child: the parent's channels and outbox threads are not ours; dropped
    unclosed (measured: the parent keeps its connection), new ones are made on first use."""
    global _clients, _clients_lock
    _clients, _clients_lock = {}, threading.Lock()


def client_for(address: str, config: ChannelConfig | None = None) -> CoordinatorClient:
    """The process-wide client of one coordinator address and channel config (channels are
    costly to build); `config` defaults to `ChannelConfig.from_env()`. `ConfigurationError`
    if a TLS file cannot be read."""
    key = (address, config or ChannelConfig.from_env())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = CoordinatorClient(*key)
        return client
