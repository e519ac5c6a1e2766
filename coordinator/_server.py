"""The coordinator's gRPC server: the Coordinator and Admin services, health, reflection.

`CoordinatorServer(settings)` opens the decision log and the resource registry (no database
is contacted yet) and loads or generates the admin token; `start()` binds the listen address,
serves on a thread pool and starts the recovery loop (its first pass runs at once); `stop()`
stops recovery, stops accepting, lets calls in flight finish, then writes what the log has
queued and closes it. Used by `__main__` and, in-process, by the tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from grpc_reflection.v1alpha import reflection as _reflection

from twostep.v1 import admin_pb2_grpc as _admin_pb_grpc
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from ._admin import ADMIN_SERVICE_NAME, AdminServicer, load_admin_token
from ._config import Settings
from ._log import DecisionLog
from ._recovery import Recovery
from ._registry import ResourceRegistry
from ._service import CoordinatorServicer
from ._sqlite_log import SqliteDecisionLog

__all__ = ["SERVICE_NAME", "CoordinatorServer"]

log = logging.getLogger("twostep.coordinator")

SERVICE_NAME = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # twostep.v1.Coordinator
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # 1000 transactions of 64 branches fit with room


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CoordinatorServer:
    """One coordinator process's server. Not restartable: build a new one."""

    def __init__(
        self,
        settings: Settings,
        *,
        decision_log: DecisionLog | None = None,
        clock: Callable[[], int] = _now_ms,
        run_recovery: bool = True,
    ):
        """`run_recovery=False`: no recovery loop (a test drives `recovery.run_pass()`)."""
        self.settings = settings
        # The token first: it may be generated into data_dir, and is the likelier to fail.
        self.admin_token, self.admin_token_file = load_admin_token(settings)
        self.decision_log: DecisionLog = decision_log or SqliteDecisionLog(
            settings.data_dir, max_batch=settings.max_batch, clock=clock
        )
        self.registry = ResourceRegistry(settings.resources)
        self.recovery = Recovery(
            self.decision_log,
            self.registry,
            cluster_id=settings.cluster_id,
            interval_ms=settings.recovery_interval_ms,
            grace_ms=settings.recovery_grace_ms,
            kill_grace_ms=settings.kill_grace_ms,
            kill_live_sessions=settings.kill_live_sessions,
            clock=clock,
        )
        self._run_recovery = run_recovery
        self.address = ""  # "host:port" once started, with the port actually bound
        self._health = _health.HealthServicer(experimental_non_blocking=True)
        self._server = grpc.server(
            ThreadPoolExecutor(settings.workers, thread_name_prefix="twostep-rpc"),
            options=[
                # A second process on the same port must fail to start, not share the traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        servicer = CoordinatorServicer(
            self.decision_log,
            cluster_id=settings.cluster_id,
            default_timeout_ms=settings.default_timeout_ms,
            max_timeout_ms=settings.max_timeout_ms,
            clock=clock,
        )
        admin = AdminServicer(
            self.decision_log,
            self.recovery,
            self.registry,
            cluster_id=settings.cluster_id,
            token=self.admin_token,
            clock=clock,
        )
        _pb_grpc.add_CoordinatorServicer_to_server(servicer, self._server)
        _admin_pb_grpc.add_AdminServicer_to_server(admin, self._server)
        _health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        services = (SERVICE_NAME, ADMIN_SERVICE_NAME, _health.SERVICE_NAME)
        _reflection.enable_server_reflection((*services, _reflection.SERVICE_NAME), self._server)

    @property
    def log_path(self) -> str:
        """Where the decisions are kept (the SQLite file for the embedded log)."""
        return str(getattr(self.decision_log, "path", type(self.decision_log).__name__))

    def start(self) -> str:
        """Bind and serve; returns the bound address. Raises `OSError` if it cannot bind."""
        host, _, _ = self.settings.listen.rpartition(":")
        try:
            port = self._server.add_insecure_port(self.settings.listen)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            port = 0
            error = exc
        else:
            error = None
        if not port:
            self.decision_log.close()
            self.registry.close()
            raise OSError(f"cannot listen on {self.settings.listen}: {error or 'bind failed'}")
        self.address = f"{host}:{port}"
        self._server.start()
        for service in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            self._health.set(service, _health_pb2.HealthCheckResponse.SERVING)
        if self._run_recovery:
            self.recovery.start()
        return self.address

    def stop(self, grace: float = 10.0) -> None:
        """Stop recovery and accepting calls, let calls in flight finish (up to `grace` s),
        close the log and the resources' sessions."""
        self._health.enter_graceful_shutdown()
        self.recovery.stop(grace)
        self._server.stop(grace).wait()
        self.decision_log.close()
        self.registry.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; False if `timeout` passed first."""
        return self._server.wait_for_termination(timeout)
