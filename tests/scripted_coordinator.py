"""A scripted gRPC proxy in front of a real coordinator, for wire faults a network can cause.

    proxy = ScriptedCoordinator(real.address, commits=[
        DecideThen(grpc.StatusCode.UNAVAILABLE),   # 1st Commit: decided upstream, reply lost
        Refuse(grpc.StatusCode.UNAUTHENTICATED),   # 2nd: an auth proxy refuses
    ])
    with global_transaction(coordinator=proxy.address): ...

Every call but Commit is forwarded unchanged. Each Commit takes the next step of the script
(the last step repeats): `Forward()` passes it on; `DecideThen(code)` passes it on, so the
coordinator decides, then fails the call with `code` (the reply is lost); `Refuse(code)` fails
it without passing it on; `Answer(reply)` passes it on and answers `reply(gtrid)` instead of
the coordinator's reply (a reply that is not a decision); `Meanwhile(action)` passes it on,
runs `action(gtrid)` once the coordinator has decided, then answers (someone acts between the
decision and phase 2). The coordinator and the databases
stay real; only what crosses the wire is scripted.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

__all__ = ["Answer", "DecideThen", "Forward", "Meanwhile", "Refuse", "ScriptedCoordinator"]


@dataclass(frozen=True)
class Forward:
    pass


@dataclass(frozen=True)
class DecideThen:
    code: grpc.StatusCode


@dataclass(frozen=True)
class Refuse:
    code: grpc.StatusCode


@dataclass(frozen=True)
class Answer:
    reply: Callable[[str], pb.CommitResponse]


@dataclass(frozen=True)
class Meanwhile:
    action: Callable[[str], None]


Step = Forward | DecideThen | Refuse | Answer | Meanwhile


class ScriptedCoordinator(pb_grpc.CoordinatorServicer):
    def __init__(self, upstream: str, commits: Sequence[Step]):
        self._channel = grpc.insecure_channel(upstream)
        self._up = pb_grpc.CoordinatorStub(self._channel)
        self._script = list(commits) or [Forward()]
        self._lock = threading.Lock()  # guards commit_calls and requests
        self.commit_calls = 0
        #: Every request forwarded, by method name, in arrival order.
        self.requests: collections.defaultdict[str, list[Any]] = collections.defaultdict(list)
        self._server = grpc.server(ThreadPoolExecutor(8))
        pb_grpc.add_CoordinatorServicer_to_server(self, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self._channel), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(0).wait()
        self._channel.close()

    def _forward(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests[name].append(request)
        return _call(getattr(self._up, name), request, context)

    def Begin(self, request, context):
        return self._forward("Begin", request, context)

    def Describe(self, request, context):
        return self._forward("Describe", request, context)

    def Abort(self, request, context):
        return self._forward("Abort", request, context)

    def Ack(self, request, context):
        return self._forward("Ack", request, context)

    def GetTransaction(self, request, context):
        return self._forward("GetTransaction", request, context)

    def ListTransactions(self, request, context):
        return self._forward("ListTransactions", request, context)

    def Commit(self, request, context):
        with self._lock:
            step = self._script[min(self.commit_calls, len(self._script) - 1)]
            self.commit_calls += 1
        if isinstance(step, Refuse):
            context.abort(step.code, "scripted refusal")
        reply = self._forward("Commit", request, context)
        if isinstance(step, DecideThen):
            context.abort(step.code, "scripted: the reply was lost")
        gtrid = request.transactions[0].gtrid
        if isinstance(step, Answer):
            return step.reply(gtrid)
        if isinstance(step, Meanwhile):
            step.action(gtrid)
        return reply


def _call(method: Callable[..., Any], request: Any, context: grpc.ServicerContext) -> Any:
    """Pass one call upstream; its failure becomes this call's status."""
    try:
        return method(request, timeout=10)
    except grpc.RpcError as exc:
        context.abort(exc.code(), exc.details() or "")


class _Health(health_pb2_grpc.HealthServicer):
    """The coordinator's health service, passed through (the client probes it before Commit)."""

    def __init__(self, channel: grpc.Channel):
        self._up = health_pb2_grpc.HealthStub(channel)

    def Check(self, request, context):
        return _call(self._up.Check, request, context)
