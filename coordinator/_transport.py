"""The gRPC transport: an asyncio (`grpc.aio`) server on its own event-loop thread, and the
limits on connections and calls.

Why asyncio. grpcio's thread-pool server reads a unary call's request *on a worker thread*: a
call whose headers arrived but whose message never does holds a worker until the caller gives
up, so 32 such calls on one connection (the default worker count) froze every RPC and the
health check (issue 11). Here a call waits for its message on the event loop and takes a worker
thread only to run a synchronous handler, with the message in hand (the admin calls and the
reads of the log); the Coordinator's client calls (Begin, Commit, Abort, Ack, Describe) and the
health check are coroutines answered on the loop and need no worker at all: a Commit awaits
its decision's fsync there, holding no thread. A stalled call costs memory (about 11 KiB),
not capacity: with 200 of them on one connection, or 200 on each of 8, another client's
Begin + Commit took 5-7 ms and the health check under 1 ms (`python -m bench hostile`); the
thread-pool server timed both out with 40 on one connection.

What bounds the rest (`transport_options`):
- connections: at most `max_connections` at once (a new one beyond is closed at once, so a
  client is told UNAVAILABLE instead of waiting in the listen queue), and never more than the
  process's descriptor limit allows with `_FD_RESERVE` kept for the log and the databases
  (`fit_descriptor_limit` raises the soft limit towards the hard one first);
- an idle connection (no call for `connection_idle_ms`) is closed, so idle connections do not
  keep their descriptors; every connection is closed after `_MAX_CONNECTION_AGE_MS` (with
  `_MAX_CONNECTION_AGE_GRACE_MS` for its calls to end: a stalled call does not live longer);
  a TCP connection that has not finished its handshake (TLS or HTTP/2 preface) in
  `_HANDSHAKE_TIMEOUT_MS` is closed;
- calls: at most `_MIN_STREAMS_PER_CONNECTION` or `workers`, whichever is more, at once on one
  connection (HTTP/2 makes the caller queue the rest on its side; one connection can still
  keep every worker busy), so stalled calls are bounded by connections x streams;
- keepalive: the server pings a connection with calls in flight every `_KEEPALIVE_MS` and
  drops it if the peer does not answer in `_KEEPALIVE_TIMEOUT_MS` (a vanished client host
  does not keep its calls); a client pinging more often than `_MIN_CLIENT_PING_MS` without
  calls is sent GOAWAY after `_MAX_PING_STRIKES` strikes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

__all__ = ["AsyncServer", "fit_descriptor_limit", "transport_options"]

log = logging.getLogger("twostep.coordinator")

_T = TypeVar("_T")

#: Descriptors kept for what is not a connection: the log's files and reader connections, the
#: databases' sessions (recovery, claims), the listening socket, stdio.
_FD_RESERVE = 128
_MIN_STREAMS_PER_CONNECTION = 100
_MAX_CONNECTION_AGE_MS = 30 * 60_000
_MAX_CONNECTION_AGE_GRACE_MS = 60_000  # a Commit waits at most 60 s for the log
_HANDSHAKE_TIMEOUT_MS = 10_000
_KEEPALIVE_MS = 60_000
_KEEPALIVE_TIMEOUT_MS = 20_000
_MIN_CLIENT_PING_MS = 60_000
_MAX_PING_STRIKES = 2


def fit_descriptor_limit(max_connections: int) -> int:
    """How many connections the process can take: `max_connections`, or fewer if even the
    hard descriptor limit cannot hold them plus `_FD_RESERVE` (then a warning says so). Raises
    the soft limit (`RLIMIT_NOFILE`) as far as needed and allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit", extra={"error": exc})
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fitted = max(1, soft - _FD_RESERVE)
    log.warning(
        "max_connections cut to what the descriptor limit (ulimit -n) holds",
        extra={"max_connections": max_connections, "fitted": fitted, "nofile": soft},
    )
    return fitted


def transport_options(
    *, workers: int, max_message_bytes: int, max_connections: int, connection_idle_ms: int
) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments (the limits of the module docstring)."""
    return [
        # A second process on the same port must fail to start, not share the traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.max_concurrent_streams", max(_MIN_STREAMS_PER_CONNECTION, workers)),
        ("grpc.max_connection_idle_ms", connection_idle_ms),
        ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", _MAX_CONNECTION_AGE_GRACE_MS),
        ("grpc.server_handshake_timeout_ms", _HANDSHAKE_TIMEOUT_MS),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", _MIN_CLIENT_PING_MS),
        ("grpc.http2.max_ping_strikes", _MAX_PING_STRIKES),
    ]


class AsyncServer:
    """A `grpc.aio.Server` driven from plain threads: its event loop runs on a thread of its
    own, and every method here blocks the caller until the loop has done the work.

    Synchronous handlers run on a pool of `workers` threads; coroutine handlers (the client
    calls, health, reflection) on the loop. Not restartable.
    """

    def __init__(
        self,
        *,
        workers: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: Sequence[tuple[str, Any]],
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="twostep-grpc-loop", daemon=True
        )
        self._thread.start()
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="twostep-rpc")

        async def make() -> grpc.aio.Server:  # the server binds itself to the running loop
            return grpc.aio.server(
                migration_thread_pool=self._pool,
                interceptors=interceptors,
                options=options,
            )

        self.server = self.run(make())

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run `coroutine` on the server's loop; its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Bind `address`; the port bound (0 or `RuntimeError` when it cannot)."""

        async def bind() -> int:
            if credentials is None:
                return self.server.add_insecure_port(address)
            return self.server.add_secure_port(address, credentials)

        return self.run(bind())

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> None:
        """Stop accepting calls, let those in flight finish for up to `grace` s, cancel the
        rest, then end the loop and the worker threads. Safe to call twice."""
        if self._stopped.is_set():
            return
        if self._loop.is_running():
            self.run(self.server.stop(grace))
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `stop` has ended the server; False if `timeout` passed first."""
        return self._stopped.wait(timeout)
