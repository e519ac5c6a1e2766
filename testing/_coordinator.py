"""A coordinator in its own process, for tests that kill it, restart it, or arm failpoints.

    proc = CoordinatorProcess(tmp_path / "coord", failpoints="coordinator.after_decision_fsync")
    proc.start()                     # waits for the start line; picks a free port
    channel = proc.channel.open(proc.address)  # plain text, or TLS when it was given one
    proc.wait_exit(10)               # e.g. after a failpoint killed it
    proc.restart(failpoints="")      # same data dir and port: the channel reconnects by itself
    proc.get(gtrid).state_name       # "COMMITTED" (a quick look through the process's own channel)

With `resources={"orders": pg_config, ...}` (the names the application's connections use) the
process can finish what a crashed client left: `proc.settle()` runs recovery passes until
nothing of its cluster is prepared. `coordinator_processes(base_dir)` makes processes and
stops every one at exit; the pytest plugin's `coordinator_factory` / `coordinator` fixtures
are built on it. `atexit` kills any still alive when the interpreter ends. The process's
stderr (logfmt or JSON lines, as its `log_format` says) is kept in `output`, for failure
messages.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from twostep.client import ChannelConfig
from twostep.v1 import admin_pb2 as _admin_pb
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from ._admin import Admin

__all__ = [
    "CoordinatorProcess",
    "TransactionView",
    "config_toml",
    "coordinator_processes",
]

_STARTED = "coordinator started"
_LOGFMT_PAIR = re.compile(r'(?P<key>\w+)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
_FAILPOINTS = "TWOSTEP_FAILPOINTS"

# Every process started here, for the atexit safety net (a test that forgot to stop one).
_live: weakref.WeakSet[CoordinatorProcess] = weakref.WeakSet()


@dataclass(frozen=True)
class TransactionView:
    """GetTransaction's answer, with the state as a plain name ("ACTIVE", "COMMITTED", ...)."""

    gtrid: str
    state_name: str
    reason: str
    completed: bool
    deadline_unix_ms: int
    resources: tuple[str, ...]
    message: _pb.Transaction


class CoordinatorProcess:
    """`python -m twostep.coordinator` on a data dir, started and stopped by a test."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        *,
        failpoints: str | None = None,
        args: Sequence[str] = (),
        resources: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
        start_timeout: float = 20.0,
        channel: ChannelConfig | None = None,
    ):
        """`env`: TWOSTEP_* variables; `failpoints`: TWOSTEP_FAILPOINTS (names, comma-separated,
        see twostep.client.tpc.failpoints); `args`: extra command-line flags; `resources`:
        participant databases by the names the application's connections use, each a client
        config (`pg_config`); `settings`: the config file's [coordinator] table (e.g.
        `{"recovery_grace_s": 0}`). `resources` and `settings` are written to a TOML file
        beside the data dir (`<data_dir>.toml`) and passed with `--config`. `channel`: how
        `get` and `admin` reach it when `settings` turn on TLS or caller credentials (the
        CA, a client certificate, the client token)."""
        self.data_dir = Path(data_dir)
        #: TWOSTEP_* variables of the process (settings, failpoints). The test run's own
        #: TWOSTEP_* variables are not inherited, so a stray one cannot change a test.
        self.env: dict[str, str] = dict(env or {})
        if failpoints is not None:
            self.env[_FAILPOINTS] = failpoints
        self.args = list(args)  # extra command-line flags
        if resources or settings:
            config = self.data_dir.with_name(self.data_dir.name + ".toml")
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(config_toml(settings or {}, resources or {}), encoding="utf-8")
            self.args += ["--config", str(config)]
        self.start_timeout = start_timeout
        self.channel = channel or ChannelConfig()
        self.port: int | None = None  # chosen at the first start, kept by restarts
        self.start_line = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()  # guards _lines (appended by the reader threads)
        self._reader: threading.Thread | None = None  # the current process's stderr reader
        self._started = threading.Event()
        self._channel: grpc.Channel | None = None  # for get() / wait_for(), made on first use

    # -- what a test reads -----------------------------------------------------------------

    @property
    def address(self) -> str:
        """The `127.0.0.1:PORT` of the running (or last running) process."""
        if self.port is None:
            raise RuntimeError("the coordinator has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The decision log file, as the start line names it."""
        return Path(self._started_with("decision_log"))

    @property
    def cluster_id(self) -> str:
        """The cluster id the running (or last running) process named in its start line."""
        return self._started_with("cluster")

    @property
    def metrics_address(self) -> str:
        """The `HOST:PORT` of its metrics endpoint (GET /metrics), as the start line names
        it; `RuntimeError` if it serves none (`metrics_listen` is off by default)."""
        address = self._started_with("metrics")
        if address == "off":
            raise RuntimeError("the coordinator serves no metrics: set metrics_listen")
        return address

    def _started_with(self, key: str) -> str:
        fields = _start_fields(self.start_line)
        if fields is None or key not in fields:
            raise RuntimeError(f"no {key} in the start line {self.start_line!r}")
        return fields[key]

    @property
    def output(self) -> str:
        """Everything this process (and its earlier runs) wrote to stderr."""
        with self._lines_lock:
            return "".join(self._lines)

    def wait_for_output(self, text: str, timeout: float = 10.0) -> str:
        """`output` once it holds `text`; `TimeoutError` (with its last lines) if not in
        `timeout` seconds. For a line of a live process: it reaches `output` through a reader
        thread, which may run after the reply the process sent next."""
        deadline = time.monotonic() + timeout
        while text not in (output := self.output):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not written in {timeout} s:\n{output[-2000:]}")
            time.sleep(0.02)
        return output

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def get(self, gtrid: str, timeout: float = 10.0) -> TransactionView | None:
        """GetTransaction (waiting for the process to be reachable); None when NOT_FOUND."""
        if self._channel is None:
            self._channel = self.channel.open(self.address)
        stub = _pb_grpc.CoordinatorStub(self._channel)
        request = _pb.GetTransactionRequest(gtrid=gtrid)
        try:
            t = stub.GetTransaction(
                request, metadata=self.channel.metadata(), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        name = _pb.TransactionState.Name(t.state).removeprefix("TRANSACTION_STATE_")
        resources = tuple(b.resource for b in t.branches)
        return TransactionView(
            t.gtrid, name, t.reason, t.completed, t.deadline_unix_ms, resources, t
        )

    def wait_for(
        self,
        gtrid: str,
        predicate: Callable[[TransactionView], bool],
        timeout: float = 10.0,
    ) -> TransactionView:
        """Poll `get` until the transaction exists and `predicate` holds; `TimeoutError` if not."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(gtrid, timeout=max(0.1, deadline - time.monotonic()))
            if view is not None and predicate(view):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gtrid}: still {view} after {timeout} s")
            time.sleep(0.02)

    # -- recovery ----------------------------------------------------------------------------

    def admin(self) -> Admin:
        """A client of this process's Admin service (close it, or use it in a `with`)."""
        return Admin(self, channel=self.channel)

    def recover(self, *, dry_run: bool = False) -> _admin_pb.RecoveryReport:
        """One recovery pass now (Admin.Recover); its report."""
        with self.admin() as admin:
            return admin.recover(dry_run=dry_run)

    def settle(self, timeout: float = 30.0) -> int:
        """Run recovery passes until no branch of this coordinator's cluster is prepared on any
        registered resource; the number of passes. `TimeoutError` after `timeout` seconds;
        `RuntimeError` if no resource is registered (nothing could be finished).

        Recovery finishes a decided transaction once `recovery_grace_s` has passed since the
        decision (10 s by default: set it to 0 for tests) and aborts an undecided one with
        prepared branches (the client died before Commit) once it is past its deadline and two
        scans saw it: give such a transaction a short `timeout` in the test.
        """
        give_up = time.monotonic() + timeout
        passes = 0
        with self.admin() as admin:
            if not admin.status().resources:
                raise RuntimeError("settle() needs resources: start the coordinator with them")
            while True:
                report = admin.recover()
                passes += 1
                left = admin.prepared_here()
                if not left:
                    return passes
                if time.monotonic() > give_up:
                    raise TimeoutError(
                        f"still prepared after {passes} recovery passes in {timeout} s: "
                        f"{left}; the last pass: {report}"
                    )
                time.sleep(0.2)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> CoordinatorProcess:
        """Start and wait for the start line; the first start picks a free port."""
        if self.is_running():
            raise RuntimeError("the coordinator is already running")
        listen = f"127.0.0.1:{self.port or 0}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "twostep.coordinator", "--listen", listen]
        command += ["--data-dir", str(self.data_dir), *self.args]
        self._started.clear()
        proc = self._proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _live.add(self)
        self._reader = threading.Thread(
            target=self._read_stderr, args=(proc,), name="coordinator-stderr", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._started.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                code = proc.poll()
                self._terminate()
                state = f"exited with {code}" if code is not None else "did not start in time"
                raise RuntimeError(f"coordinator {state}; its stderr:\n{self.output}")
        return self

    def kill(self) -> None:
        """SIGKILL and reap: nothing is flushed, exactly like a crash."""
        if self.is_running():
            assert self._proc is not None
            self._proc.send_signal(signal.SIGKILL)
        self._reap(10.0)

    def terminate(self) -> None:
        """SIGTERM without waiting (see `wait_exit`); `stop` does both."""
        if self.is_running():
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful shutdown) and wait; the exit code. SIGKILL if it hangs."""
        if self._proc is None:
            raise RuntimeError("the coordinator has not been started")
        self.terminate()
        try:
            return self.wait_exit(timeout)
        except TimeoutError:
            self.kill()
            raise

    def restart(
        self, env: Mapping[str, str] | None = None, *, failpoints: str | None = None
    ) -> CoordinatorProcess:
        """Kill if still running, start again on the same data dir and the same port.

        `env` replaces the TWOSTEP_* variables (None keeps them); `failpoints` replaces just
        TWOSTEP_FAILPOINTS ("" disarms them all).
        """
        self.kill()
        if env is not None:
            self.env = dict(env)
        if failpoints is not None:
            self.env[_FAILPOINTS] = failpoints
        deadline = time.monotonic() + 10.0
        while True:  # the port may take a moment to be free again after a kill
            mark = len(self._lines)
            try:
                return self.start()
            except RuntimeError:
                with self._lines_lock:
                    bind_failed = any("cannot start" in line for line in self._lines[mark:])
                if not bind_failed or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_exit(self, timeout: float) -> int:
        """The exit code (negative: killed by that signal), once `output` holds all the
        process wrote; `TimeoutError` if still running."""
        if self._proc is None:
            raise RuntimeError("the coordinator has not been started")
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"coordinator pid {self._proc.pid} still running") from None
        self._drain()
        return code

    def close(self) -> None:
        """Stop the process (gracefully if it answers SIGTERM) and drop the channel."""
        self._terminate()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> CoordinatorProcess:
        return self if self.is_running() else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _terminate(self) -> None:
        """Graceful if possible, SIGKILL if not; never raises."""
        if not self.is_running():
            self._reap(1.0)
            return
        self.terminate()
        try:
            self.wait_exit(10.0)
        except TimeoutError:
            self.kill()

    def _reap(self, timeout: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
                self._drain()

    def _drain(self) -> None:
        """Wait for the reader to take the exited process's last lines: a test reading
        `output` after a kill, a stop or a failed start sees all of them, not those the reader
        thread happened to reach (bounded: a grandchild could hold the pipe open)."""
        if self._reader is not None:
            self._reader.join(5.0)

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            with self._lines_lock:
                self._lines.append(line)
            fields = _start_fields(line)
            if fields is not None and proc is self._proc:
                self.port = int(fields["listen"].rpartition(":")[2])
                self.start_line = line.strip()
                self._started.set()
        proc.stderr.close()


def _start_fields(line: str) -> dict[str, str] | None:
    """The keys and values of the start line (logfmt or JSON); None for another line."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        fields = {key: str(value) for key, value in record.items()}
    else:
        fields = {
            m["key"]: re.sub(r"\\(.)", r"\1", m["value"][1:-1])
            if m["value"].startswith('"')
            else m["value"]
            for m in _LOGFMT_PAIR.finditer(line)
        }
    return fields if fields.get("msg") == _STARTED else None


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.is_running():
            proc.kill()


@contextlib.contextmanager
def coordinator_processes(base_dir: Path) -> Iterator[Callable[..., CoordinatorProcess]]:
    """A factory of started `CoordinatorProcess`es that closes all of them on exit.

    `factory(data_dir=None, env=None, *, start=True, failpoints=None, args=(), resources=None,
    settings=None)` (see `CoordinatorProcess`); the default data dir is a fresh directory
    under `base_dir`.
    """
    made: list[CoordinatorProcess] = []

    def factory(
        data_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        start: bool = True,
        **kwargs: object,
    ) -> CoordinatorProcess:
        where = data_dir or base_dir / f"coordinator-{len(made)}"
        proc = CoordinatorProcess(where, env, **kwargs)  # type: ignore[arg-type]
        made.append(proc)
        return proc.start() if start else proc

    try:
        yield factory
    finally:
        for proc in made:
            proc.close()


def config_toml(settings: Mapping[str, Any], resources: Mapping[str, Mapping[str, Any]]) -> str:
    """A coordinator config file: `settings` as its [coordinator] table, each resource (a
    client config dict) as a [resources.NAME] table. A None value is left out (unset)."""
    lines = ["[coordinator]", *_toml_pairs(settings)]
    for name, config in resources.items():
        lines += ["", f"[resources.{_toml(name)}]", *_toml_pairs(config)]
    return "\n".join(lines) + "\n"


def _toml_pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_toml(key)} = {_toml(value)}" for key, value in table.items() if value is not None]


def _toml(value: Any) -> str:
    """A TOML value: bool, int, float, str, or a list or a mapping of them (an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for surrogate-pair escapes (hence no
        # ensure_ascii) and a raw DEL (TOML wants it escaped).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return "{" + ", ".join(_toml_pairs(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to a coordinator config")
