"""What both throwaway servers share: directories, process lifecycle, ports, crash simulation.

Each server gets its own data dir, its own configuration (command-line options only, nothing
from /etc) and a free 127.0.0.1 port, so the machine's services on 5432/3306 are never used.
`kill()` is a real SIGKILL of every process of the instance (a crash); `restart()` brings the
same data dir back on the same port, which is what crash-recovery tests need. As root, a
server runs as its service account (postgres, mysql), which then owns its base dir.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ._processes import (
    HOST,
    ServerError,
    free_port,
    kill_tree,
    names_dir,
    pids_with_cwd,
    tail,
    wait_gone,
)

START_TIMEOUT = 60.0  # generous: a restart after kill() includes crash recovery
STOP_TIMEOUT = 30.0
PORT_ATTEMPTS = 5
_SUN_PATH_MAX = 107  # Linux limit for a unix socket path
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")


class _PortInUse(ServerError):
    """The chosen port was taken between picking it and the server binding it."""


class Server(ABC):
    """What both servers share: directories, process lifecycle, ports, crash simulation."""

    name: ClassVar[str]
    os_user: ClassVar[str]  # service account the server runs as when we are root
    package: ClassVar[str]  # Debian package that provides the binaries
    stop_signal: ClassVar[signal.Signals]
    _initialized_marker: ClassVar[str]  # entry of data_dir that exists once it is initialised
    #: Settings the instance chooses itself (its port, paths, account): not for `settings`.
    _own_settings: ClassVar[frozenset[str]]
    host = HOST

    def __init__(self, base_dir: Path, *, settings: Mapping[str, str | int] | None = None) -> None:
        """`settings`: server settings added to or replacing the defaults (`name: value`;
        PostgreSQL's `-c name=value`, MariaDB's `--name=value`), e.g. a benchmark's
        `{"max_connections": 400}`. Names are lower case with `_` (MariaDB's `-` spelling is
        accepted); `ValueError` for another name, or one the instance sets itself (port,
        paths, account)."""
        self.base_dir = Path(base_dir).resolve()
        self.settings = _checked_settings(self.name, settings or {}, self._own_settings)
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        missing = [str(path) for path in self._binaries() if not os.access(path, os.X_OK)]
        if missing:
            raise ServerError(
                f"{self.name} binaries missing: {missing}; apt-get install {self.package}"
            )
        if len(str(self.socket_path)) > _SUN_PATH_MAX:
            raise ServerError(f"base dir too long for a unix socket path: {self.socket_path}")
        self._prepare_base_dir()
        self._kill_leftovers()

    # -- what each server defines

    @property
    @abstractmethod
    def data_dir(self) -> Path: ...

    @property
    @abstractmethod
    def log_file(self) -> Path: ...

    @property
    @abstractmethod
    def pid_file(self) -> Path: ...

    @property
    @abstractmethod
    def socket_path(self) -> Path: ...

    @abstractmethod
    def _binaries(self) -> list[Path]: ...

    @abstractmethod
    def _initdb_command(self) -> list[str]: ...

    @abstractmethod
    def _server_command(self) -> list[str]: ...

    @abstractmethod
    def ping(self) -> bool:
        """True if our server (not some other one) accepts connections right now."""

    @abstractmethod
    def admin_connect(self, database: str | None = None) -> Any:
        """A fresh autocommit superuser connection, for tests to inspect state."""

    @abstractmethod
    def config(self, database: str) -> dict[str, Any]:
        """A twostep client config dict for `database` on this server."""

    @abstractmethod
    def create_database(self, name: str, exist_ok: bool = False) -> None: ...

    @abstractmethod
    def drop_database(self, name: str) -> None:
        """Drops `name`, disconnecting its sessions first (prepared transactions still block)."""

    @abstractmethod
    def rollback_prepared(self, database: str | None = None) -> list[str]:
        """Rolls back leftover prepared transactions; returns their identifiers."""

    def _on_ready(self) -> None:  # noqa: B027 - optional hook
        """Runs after every start, once the server accepts connections."""

    @classmethod
    def _as_service_user(cls, command: list[str]) -> list[str]:
        """`command`, wrapped to run as the service user if it must drop root.

        Never by Popen's `user=`/`group=`: those make Python fork() rather than vfork(), and a
        fork runs gRPC's at-fork handlers in the child, which restart gRPC's poller threads
        there; closing the inherited descriptors before exec then kills that child (the
        server "exited while starting" with an epoll EBADF error in its log, in a test process
        that holds gRPC channels)."""
        return command

    # -- state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts the server (initialising the data dir the first time) and waits until it
        accepts connections. The first start picks a free port; later starts reuse it."""
        if self.is_running():
            return
        self._kill_leftovers()
        if not (self.data_dir / self._initialized_marker).exists():
            self._initialize()
        if self.port is not None:
            self._launch(timeout)
            return
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._launch(timeout)
                return
            except _PortInUse:
                self.port = None
        raise ServerError(f"{self.name}: no free port after {PORT_ATTEMPTS} attempts")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Clean shutdown; falls back to kill() (and raises) if it takes longer than timeout."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(f"{self.name} did not shut down in {timeout}s; killed it") from None
        self._proc = None

    def kill(self) -> None:
        """SIGKILL every process of this instance, like a crash. Data dir and port are kept."""
        proc = self._proc
        if proc is not None:
            pids = kill_tree(proc.pid) if proc.poll() is None else []
            proc.wait()
            wait_gone(pids)
            self._proc = None
        self._kill_leftovers()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stops the server if it runs, then starts it on the same port and data dir."""
        self.stop()
        self.start(timeout)

    # -- internals

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        # The server runs as its service user: it must own the base dir and reach it.
        for parent in self.base_dir.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        self._chown(self.base_dir)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.os_user)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _kill_leftovers(self) -> None:
        """Kills a server a previous (crashed) run left in this data dir, and orphans of ours.

        The pid file is trusted only if that process's command line names our data dir; the
        working-directory scan catches children whose parent was already killed.
        """
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError, IndexError):
            stale = int(self.pid_file.read_text().split()[0])
            if stale != os.getpid() and names_dir(stale, self.data_dir):
                pids += kill_tree(stale)
        for orphan in pids_with_cwd(self.data_dir):
            pids += kill_tree(orphan)
        wait_gone(pids)

    def _initialize(self) -> None:
        result = subprocess.run(
            self._as_service_user(self._initdb_command()),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made dir would be reused
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise ServerError(f"{self.name} initialisation failed:\n{output}")

    def _launch(self, timeout: float) -> None:
        self.log_file.touch()
        self._chown(self.log_file)
        offset = self.log_file.stat().st_size  # report only what this start logged
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                self._as_service_user(self._server_command()),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach the server
            )
        if self not in _STARTED:
            _STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                logged = tail(self.log_file, offset)
                if "Address already in use" in logged:
                    raise _PortInUse(f"{self.name}: port {self.port} is in use")
                raise ServerError(f"{self.name} exited while starting; {self.log_file}:\n{logged}")
            if self.ping():
                self._on_ready()
                return
            time.sleep(0.05)
        self.kill()
        logged = tail(self.log_file, offset)
        raise ServerError(f"{self.name} not ready after {timeout}s; {self.log_file}:\n{logged}")


def _checked_settings(
    server: str, settings: Mapping[str, str | int], own: frozenset[str]
) -> dict[str, str | int]:
    checked: dict[str, str | int] = {}
    for raw_name, value in settings.items():
        name = raw_name.replace("-", "_")
        if not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"{server}: {raw_name!r} is not a setting name")
        if name in own:
            raise ValueError(f"{server}: {raw_name!r} is chosen by the throwaway server itself")
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError(f"{server}: setting {raw_name!r} must be a str or int: {value!r}")
        checked[name] = value
    return checked


# Servers this process started; whatever still runs at interpreter exit is stopped.
_STARTED: list[Server] = []


@atexit.register
def _stop_started() -> None:
    for server in _STARTED:
        if server.is_running():
            try:
                server.stop()
            except ServerError:
                server.kill()
