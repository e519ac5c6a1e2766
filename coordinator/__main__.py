"""`twostep-coordinator` (also `python -m twostep.coordinator`): run the coordinator.

Reads the settings (`--help`), starts the server, logs one INFO line naming the listen address,
the decision log, the cluster id, the registered resources, the file that holds the admin token
(`admin_token_file=`; `admin_token=configured` when it is set directly, never the token) and the
metrics endpoint (`metrics=HOST:PORT`, or `off`), and serves until SIGTERM or SIGINT; then stops
recovery and accepting, lets calls in flight finish (for up to `shutdown_grace`) and closes the
log. The stop is bounded whatever a database does: a call still waiting for one at the end is
not waited for, and if the stop itself has not ended `_FORCE_AFTER_S` after the grace (or at a
second signal), the process logs why and exits at once with status 1. The last line,
"coordinator stopped", counts the log's work since the start: `log_requests=` (writes queued),
`log_items=` (rows), `log_batches=` (SQLite transactions committed), `log_fsyncs=` (those
committed with an fsync: what the benchmark's fsyncs per decision divides),
`log_failed_batches=`. Exit status 2: invalid settings (a configured cluster id the data
directory does not hold included); 1: could not start (address in use, unusable data directory,
another coordinator running on the data directory, or another live coordinator holding this
cluster id's claim on a registered resource).

`--health-check HOST:PORT` (the container's health check) and `--print-config-reference`
(docs/config.md) do their one thing and exit without starting anything.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from twostep.client.tpc.failpoints import armed

from ._claim import ClaimConflict
from ._config import ConfigError, load_settings
from ._datadir import DataDirInUse
from ._log_format import configure_logging
from ._server import CoordinatorServer
from .log import LogUnavailable

log = logging.getLogger("twostep.coordinator")

_FORCE_AFTER_S = 5.0  # after the grace: how long the stop itself may take
_SIGNAL_POLL_S = 0.2  # the main thread looks for a signal another thread took this often


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"twostep-coordinator: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    if armed():
        failpoints = ",".join(sorted(armed()))
        log.warning(
            "failpoints armed: this process kills itself at them", extra={"names": failpoints}
        )

    try:
        server = CoordinatorServer(settings)
    except ConfigError as exc:
        print(f"twostep-coordinator: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except DataDirInUse as exc:
        print(f"twostep-coordinator: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (OSError, sqlite3.Error, LogUnavailable) as exc:
        where = settings.data_dir.resolve()
        log.error("cannot open the decision log", extra={"data_dir": where, "error": exc})
        raise SystemExit(1) from None
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            _exit_now("a second signal came while stopping")
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        address = server.start()
    except ClaimConflict as exc:
        print(f"twostep-coordinator: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        log.error("cannot start", extra={"error": exc})
        raise SystemExit(1) from None
    if server.admin_token_file is not None:
        token_where = {"admin_token_file": server.admin_token_file}
    else:
        token_where = {"admin_token": "configured"}
    log.info(
        "coordinator started",
        extra={
            "listen": address,
            "cluster": server.settings.cluster_id,
            "decision_log": server.log_path,
            "resources": ",".join(server.registry.names()) or "none",
            "metrics": server.metrics_address or "off",
            **token_where,
        },
    )
    # Python runs a signal's handler in the main thread, and only once that thread runs code:
    # a signal the kernel gave another thread (any may take one sent to a stopped process,
    # or while the main thread has another pending) does not wake this wait. Measured: a
    # SIGTERM sent while the process was stopped went unanswered for the whole timeout.
    while not stopping.wait(_SIGNAL_POLL_S):
        pass
    grace = settings.shutdown_grace_ms / 1000
    log.info("coordinator stopping", extra={"grace_s": grace})
    deadline = threading.Timer(
        grace + _FORCE_AFTER_S,
        _exit_now,
        [f"the stop took longer than {grace + _FORCE_AFTER_S:g} s"],
    )
    deadline.daemon = True
    deadline.start()
    server.stop(grace)
    log.info("coordinator stopped", extra=server.log_counters())
    running = server.recovery.calls_running()
    if running:
        # Bounded by database_timeout, but the interpreter would wait for them at exit.
        log.warning("not waiting for database calls still running", extra={"calls": running})
        _flush_and_exit(0)


def _exit_now(why: str) -> None:
    log.error("coordinator did not stop in time; exiting now", extra={"why": why})
    _flush_and_exit(1)


def _flush_and_exit(status: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
