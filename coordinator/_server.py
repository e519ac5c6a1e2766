"""The coordinator's gRPC server: the Coordinator and Admin services, health, reflection.

`CoordinatorServer(settings)` locks the data directory (`_datadir`), opens the decision log,
settles the cluster id (the data directory's), loads or generates the admin token, reads the
TLS files and the client token and checks who could reach it (`_callers`: `ConfigError` for
a bad file or an exposed plain-text port), and builds the resource registry (no database is
contacted yet); `start()` takes the cluster claim on
every resource (`_claim`), binds the listen address, serves (`_transport`: an asyncio server
whose client calls run on its event loop and the others on a pool of `workers` threads, with
limits on connections) and starts the
recovery loop (its first pass runs at once); `stop()` stops recovery, stops accepting, lets
calls in flight finish, then writes what the log has queued, closes it and releases the
claims and the data directory; `log_counters()` says how many writes and fsyncs the log
made. `metrics` (`_metrics`) are refreshed by every recovery pass and served over HTTP on
`metrics_listen` from `start()`. Used by `__main__` and, in-process, by the tests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from grpc_reflection.v1alpha import reflection as _reflection

from twostep.v1 import admin_pb2_grpc as _admin_pb_grpc
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from ._admin import ADMIN_SERVICE_NAME, AdminServicer, load_admin_token
from ._callers import CallerCheck, check_exposure, load_client_tokens, server_credentials
from ._claim import ClusterClaims
from ._config import ConfigError, Settings
from ._datadir import DataDir
from ._log_store import claim_shared_by, open_decision_log
from ._metrics import Metrics
from ._registry import ResourceRegistry
from ._service import CoordinatorServicer
from ._transport import AsyncServer, fit_descriptor_limit, transport_options
from ._txn_view import TxnView
from .log import DecisionLog, PostgresDecisionLog, SqliteDecisionLog
from .recovery import Recovery, Report

__all__ = ["SERVICE_NAME", "CoordinatorServer"]

log = logging.getLogger("twostep.coordinator")

SERVICE_NAME = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # twostep.v1.Coordinator
#: A claim session idle longer than this is ended by its database (so a coordinator whose host
#: vanished does not keep its claim for hours); recovery passes keep it busy.
_MIN_CLAIM_IDLE_TIMEOUT_S = 60


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
        """`run_recovery=False`: no recovery loop (a test drives `recovery.run_pass()`).

        Raises `DataDirInUse` (another coordinator runs on the data directory), `ConfigError`
        (a configured cluster id the data directory does not hold, a bad admin token file),
        `OSError` / `sqlite3.Error` / `LogUnavailable` (the directory or log is unusable).
        """
        with contextlib.ExitStack() as undo:  # what was opened, closed again if a step fails
            self.data_dir = DataDir(settings.data_dir)
            undo.callback(self.data_dir.close)
            self.decision_log: DecisionLog = decision_log or open_decision_log(settings, clock)
            undo.callback(self.decision_log.close)
            cluster_id = self.data_dir.cluster_id(
                settings.cluster_id, self.decision_log.newest_gtrid
            )
            self.settings = settings = replace(settings, cluster_id=cluster_id)
            self.admin_token, self.admin_token_file = load_admin_token(settings)
            client_tokens = load_client_tokens(settings)
            if self.admin_token in client_tokens:
                raise ConfigError("the client tokens must differ from the admin token")
            self._credentials = server_credentials(settings)
            mutual_tls = settings.tls_client_ca_file is not None
            #: What is insecure about how it listens (logged as warnings at start).
            self.exposure_warnings = check_exposure(
                settings, callers_authenticated=bool(client_tokens) or mutual_tls
            )
            self.registry = ResourceRegistry(
                settings.resources, io_timeout=settings.database_timeout_ms / 1000
            )
            undo.pop_all()
        idle_timeout_s = max(_MIN_CLAIM_IDLE_TIMEOUT_S, 3 * settings.recovery_interval_ms // 1000)
        self.claims = ClusterClaims(
            self.registry,
            cluster_id,
            idle_timeout_s=idle_timeout_s,
            shared_by=claim_shared_by(self.decision_log),
        )
        self.metrics = Metrics()
        self.recovery = Recovery(
            self.decision_log,
            self.registry,
            cluster_id=cluster_id,
            interval_ms=settings.recovery_interval_ms,
            grace_ms=settings.recovery_grace_ms,
            kill_grace_ms=settings.kill_grace_ms,
            kill_live_sessions=settings.kill_live_sessions,
            claims=self.claims,
            retention_ms=settings.retention_ms,
            clock=clock,
            on_report=self._observe_pass,
        )
        self._txn_view = TxnView(self.decision_log, self.recovery)
        self._run_recovery = run_recovery
        self.address = ""  # "host:port" once started, with the port actually bound
        self.metrics_address = ""  # "host:port" of /metrics once started; "": off
        self._stopped = False  # stop() ran (it runs once: the event loop is gone after it)
        self._health = _health.aio.HealthServicer()
        self._grpc = AsyncServer(
            workers=settings.workers,
            interceptors=[
                CallerCheck(
                    cluster_id=cluster_id,
                    admin_token=self.admin_token,
                    client_tokens=client_tokens,
                    mutual_tls=mutual_tls,
                    admin_names=settings.tls_admin_names,
                )
            ],
            options=transport_options(
                workers=settings.workers,
                max_message_bytes=settings.max_message_bytes,
                max_connections=fit_descriptor_limit(settings.max_connections),
                connection_idle_ms=settings.connection_idle_ms,
            ),
        )
        self._server = self._grpc.server
        servicer = CoordinatorServicer(
            self.decision_log,
            cluster_id=settings.cluster_id,
            default_timeout_ms=settings.default_timeout_ms,
            max_timeout_ms=settings.max_timeout_ms,
            clock=clock,
            metrics=self.metrics,
        )
        admin = AdminServicer(
            self.decision_log,
            self.recovery,
            self.registry,
            cluster_id=settings.cluster_id,
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
        """Claim the resources, bind and serve; returns the bound address. Raises
        `ClaimConflict` if another coordinator holds this cluster id's claim on a resource,
        `OSError` if it cannot bind; either way everything is closed again."""
        try:
            self.claims.claim_all()
            self.metrics_address = self._serve_metrics()
        except BaseException:
            self._close()
            raise
        host, _, _ = self.settings.listen.rpartition(":")
        try:
            port = self._grpc.add_port(self.settings.listen, self._credentials)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            port = 0
            error = exc
        else:
            error = None
        if not port:
            self._close()
            raise OSError(f"cannot listen on {self.settings.listen}: {error or 'bind failed'}")
        self.address = f"{host}:{port}"
        for warning in self.exposure_warnings:
            log.warning(warning, extra={"listen": self.address})
        self._grpc.start()
        for service in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            self._grpc.run(self._health.set(service, _health_pb2.HealthCheckResponse.SERVING))
        if self._run_recovery:
            self.recovery.start()
        return self.address

    def stop(self, grace: float = 10.0) -> None:
        """Stop recovery and accepting calls, let calls in flight finish (up to `grace` s),
        close the log and the resources' sessions. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._grpc.run(self._health.enter_graceful_shutdown())
        self.recovery.stop(grace)
        self._grpc.stop(grace)
        self._close()

    def _serve_metrics(self) -> str:
        listen = self.settings.metrics_listen
        if not listen:
            return ""
        try:
            return self.metrics.serve(listen)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None

    def _observe_pass(self, report: Report) -> None:
        """Recovery's `on_report`: the metrics of the pass, and the counts right after it."""
        self.metrics.recovery_pass(report, self._txn_view.counts(incomplete_only=True))

    def _close(self) -> None:
        self.metrics.close()
        self._grpc.stop(0)
        self.decision_log.close()
        self.claims.close()
        self.registry.close()
        self.data_dir.close()  # last: another coordinator may take the directory from here on

    def log_counters(self) -> dict[str, int]:
        """The log writer's counters since this server was built (`SqliteDecisionLog.stats()`,
        `PostgresDecisionLog.stats()`: requests queued, rows, batches committed, fsyncs (synced
        commits), failed batches), as the shutdown line reports them for benchmarks; empty for
        another store."""
        if not isinstance(self.decision_log, SqliteDecisionLog | PostgresDecisionLog):
            return {}
        stats = self.decision_log.stats()
        return {
            "log_requests": stats.requests,
            "log_items": stats.items,
            "log_batches": stats.batches,
            "log_fsyncs": stats.fsyncs,
            "log_failed_batches": stats.failed_batches,
        }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; False if `timeout` passed first."""
        return self._grpc.wait(timeout)
