"""Private, throwaway PostgreSQL 15 and MariaDB 10.11 servers for tests and demos.

Each server gets its own data dir, its own configuration (command-line options only, nothing
from /etc) and a free 127.0.0.1 port, so the machine's services on 5432/3306 are never used.
`kill()` is a real SIGKILL of every process of the instance (a crash); `restart()` brings the
same data dir back on the same port, which is what crash-recovery tests need.

Usage: python scripts/throwaway_dbs.py up [--dir DIR]
    Starts both servers, prints their twostep client configs as JSON (one line each, stdout),
    then waits for Ctrl-C / SIGTERM and stops both. Without --dir the data is in a temporary
    directory that is removed on exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pymysql
from psycopg import sql

HOST = "127.0.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
START_TIMEOUT = 60.0  # generous: a restart after kill() includes crash recovery
STOP_TIMEOUT = 30.0
PORT_ATTEMPTS = 5
_SUN_PATH_MAX = 107  # Linux limit for a unix socket path


class ServerError(RuntimeError):
    """A throwaway server could not be set up, started or stopped."""


class _PortInUse(ServerError):
    """The chosen port was taken between picking it and the server binding it."""


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port that is free on 127.0.0.1 now (the caller retries if it is taken later).

    Chosen below the kernel's ephemeral range rather than with bind(0): restart() reuses the
    port, and while a killed server is down, an outgoing connection or another process's
    bind(0) could otherwise take it.
    """
    ephemeral_low = _ephemeral_port_low()
    for _ in range(100):
        port = random.randrange(max(1024, ephemeral_low - 20000), ephemeral_low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((HOST, port))
            return port
    with socket.socket() as sock:  # no luck below the range: let the kernel choose
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ephemeral_port_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[1])


def _all_pids() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _stat(other)
        if stat:
            children.setdefault(stat[1], []).append(other)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie holds no resources any more


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants; returns the pids signalled.

    The parent is frozen first so that it cannot fork new children while we collect them
    (a PostgreSQL postmaster would otherwise respawn workers).
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    pids = [*_descendants(pid), pid]
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return pids


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise ServerError(f"processes still alive after SIGKILL: {pids}")
        time.sleep(0.01)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids_with_cwd(directory: Path) -> list[int]:
    """Processes whose working directory is `directory`: both servers chdir to their data dir,
    so this finds every process of an instance, even orphans whose parent was killed."""
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):  # gone, or not ours to inspect
            if pid != os.getpid() and os.readlink(f"/proc/{pid}/cwd") == str(directory):
                found.append(pid)
    return found


def _tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# --- servers ------------------------------------------------------------------------------------


class _Server(ABC):
    """What both servers share: directories, process lifecycle, ports, crash simulation."""

    name: ClassVar[str]
    os_user: ClassVar[str]  # service account the server runs as when we are root
    package: ClassVar[str]  # Debian package that provides the binaries
    stop_signal: ClassVar[signal.Signals]
    _initialized_marker: ClassVar[str]  # entry of data_dir that exists once it is initialised
    host = HOST

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).resolve()
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

    def _spawn_kwargs(self) -> dict[str, Any]:
        """Popen arguments that run a command as the service user (if it must drop root)."""
        return {}

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
            pids = _kill_tree(proc.pid) if proc.poll() is None else []
            proc.wait()
            _wait_gone(pids)
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
            if stale != os.getpid() and _names_dir(_cmdline(stale), self.data_dir):
                pids += _kill_tree(stale)
        for orphan in _pids_with_cwd(self.data_dir):
            pids += _kill_tree(orphan)
        _wait_gone(pids)

    def _initialize(self) -> None:
        result = subprocess.run(
            self._initdb_command(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            **self._spawn_kwargs(),
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
                self._server_command(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach the server
                **self._spawn_kwargs(),
            )
        if self not in _STARTED:
            _STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                tail = _tail(self.log_file, offset)
                if "Address already in use" in tail:
                    raise _PortInUse(f"{self.name}: port {self.port} is in use")
                raise ServerError(f"{self.name} exited while starting; {self.log_file}:\n{tail}")
            if self.ping():
                self._on_ready()
                return
            time.sleep(0.05)
        self.kill()
        tail = _tail(self.log_file, offset)
        raise ServerError(f"{self.name} not ready after {timeout}s; {self.log_file}:\n{tail}")


def _names_dir(cmdline: list[str], directory: Path) -> bool:
    path = str(directory)
    return any(arg == path or arg.endswith("=" + path) for arg in cmdline)


class PostgresServer(_Server):
    name = "PostgreSQL"
    os_user = "postgres"
    package = "postgresql-15"
    stop_signal = signal.SIGINT  # "fast" shutdown: does not wait for idle client sessions
    _initialized_marker = "PG_VERSION"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / ".s.PGSQL.65535"  # longest name PostgreSQL may create

    def _binaries(self) -> list[Path]:
        return [PG_BIN / "initdb", PG_BIN / "postgres"]

    def _spawn_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        # PostgreSQL refuses to run as root.
        account = pwd.getpwnam(self.os_user)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _initdb_command(self) -> list[str]:
        return [
            str(PG_BIN / "initdb"),
            f"--pgdata={self.data_dir}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # only initdb skips fsync; the server itself runs with fsync=on
            "--no-instructions",
        ]

    def _server_command(self) -> list[str]:
        settings = {
            "port": self.port,
            "listen_addresses": HOST,
            "unix_socket_directories": self.base_dir,
            "max_prepared_transactions": 64,
            "fsync": "on",
            "shared_buffers": "32MB",
            "max_connections": 200,
        }
        command = [str(PG_BIN / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def ping(self) -> bool:
        # Ask for the data dir, so that a foreign server on our port never passes for ours.
        with contextlib.suppress(psycopg.Error), self.admin_connect() as conn:
            row = conn.execute("SHOW data_directory").fetchone()
            return row is not None and row[0] == str(self.data_dir)
        return False

    def admin_connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=HOST,
            port=self.port,
            user="postgres",
            dbname=database or "postgres",
            autocommit=True,
            connect_timeout=5,
        )

    def config(self, database: str) -> dict[str, Any]:
        return {
            "driver": "postgresql",
            "host": HOST,
            "port": self.port,
            "database": database,
            "username": "postgres",
            "password": "",
        }

    def create_database(self, name: str, exist_ok: bool = False) -> None:
        with self.admin_connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if exist_ok and exists.fetchone():
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        with self.admin_connect() as conn:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))

    def rollback_prepared(self, database: str | None = None) -> list[str]:
        """Rolls back the prepared transactions of `database` (of every database if None)."""
        with self.admin_connect() as conn:
            rows = conn.execute(
                "SELECT database, gid FROM pg_prepared_xacts"
                " WHERE %(db)s::text IS NULL OR database = %(db)s ORDER BY database",
                {"db": database},
            ).fetchall()
        done = []
        for db in sorted({row[0] for row in rows}):
            # ROLLBACK PREPARED works only from a session in the transaction's database.
            with self.admin_connect(db) as conn:
                for gid in (row[1] for row in rows if row[0] == db):
                    with contextlib.suppress(psycopg.errors.UndefinedObject):  # finished already
                        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
                        done.append(gid)
        return done


class MariaDBServer(_Server):
    name = "MariaDB"
    os_user = "mysql"
    package = "mariadb-server"
    stop_signal = signal.SIGTERM  # clean shutdown
    _initialized_marker = "mysql"
    user = "twostep"
    password = "twostep"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "mariadb.log"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "mariadbd.pid"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mariadbd.sock"

    def _binaries(self) -> list[Path]:
        return [MARIADBD, MARIADB_INSTALL_DB]

    def _user_option(self) -> list[str]:
        # mariadbd drops root itself; the option is an error when we are not root.
        return [f"--user={self.os_user}"] if os.geteuid() == 0 else []

    def _initdb_command(self) -> list[str]:
        return [
            str(MARIADB_INSTALL_DB),
            "--no-defaults",  # must come first
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=normal",  # root@localhost, empty password
            "--skip-test-db",
            "--skip-name-resolve",
            *self._user_option(),
        ]

    def _server_command(self) -> list[str]:
        return [
            str(MARIADBD),
            "--no-defaults",  # must come first
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--log-bin={self.base_dir / 'binlog'}",
            "--server-id=1",
            "--sync-binlog=1",
            "--innodb-flush-log-at-trx-commit=1",
            "--innodb-buffer-pool-size=64M",
            "--skip-name-resolve",
            f"--log-error={self.log_file}",
            *self._user_option(),
        ]

    def ping(self) -> bool:
        # Through our own socket file, so this can only reach our server.
        if not self.socket_path.exists():
            return False
        with contextlib.suppress(pymysql.Error), self.admin_connect() as conn:
            conn.ping(reconnect=False)
            return True
        return False

    def _on_ready(self) -> None:
        with self.admin_connect() as conn, conn.cursor() as cur:
            for host in ("%", HOST):  # '%' alone would also match, but 127.0.0.1 is explicit
                account = [self.user, host]
                cur.execute(
                    "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", [*account, self.password]
                )
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", account)

    def admin_connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            password="",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def config(self, database: str) -> dict[str, Any]:
        return {
            "driver": "mysql",
            "host": HOST,
            "port": self.port,
            "database": database,
            "username": self.user,
            "password": self.password,
        }

    def create_database(self, name: str, exist_ok: bool = False) -> None:
        clause = "IF NOT EXISTS " if exist_ok else ""
        with self.admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {clause}{_backquote(name)}")

    def drop_database(self, name: str) -> None:
        with self.admin_connect() as conn, conn.cursor() as cur:
            self._kill_sessions(cur, name)
            cur.execute("SET SESSION lock_wait_timeout = 10")  # fail, never hang, on a lock
            cur.execute(f"DROP DATABASE IF EXISTS {_backquote(name)}")

    def rollback_prepared(self, database: str | None = None) -> list[str]:
        """Rolls back EVERY prepared XA branch: XA RECOVER does not say which database a branch
        touched. With `database`, its sessions are killed first, which detaches the branches
        they still hold so that they can be rolled back."""
        done = []
        with self.admin_connect() as conn, conn.cursor() as cur:
            if database is not None:
                self._kill_sessions(cur, database)
            cur.execute("XA RECOVER")
            for format_id, gtrid_length, _bqual_length, data in cur.fetchall():
                xid = f"X'{data[:gtrid_length].hex()}',X'{data[gtrid_length:].hex()}',{format_id}"
                try:
                    cur.execute(f"XA ROLLBACK {xid}")
                except pymysql.err.OperationalError as exc:
                    # 1397: already finished; 1402: a read-only branch was rolled back anyway.
                    if exc.args[0] not in (1397, 1402):
                        raise
                done.append(xid)
        return done

    @staticmethod
    def _kill_sessions(cur: Any, database: str, timeout: float = 10.0) -> None:
        """Kills the other sessions using `database` and waits until they are gone."""
        query = (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()"
        )
        cur.execute(query, [database])
        for (session,) in cur.fetchall():
            with contextlib.suppress(pymysql.err.OperationalError):  # ended meanwhile
                cur.execute(f"KILL CONNECTION {int(session)}")
        deadline = time.monotonic() + timeout  # KILL returns before the session has ended
        while cur.execute(query, [database]) and time.monotonic() < deadline:
            time.sleep(0.02)


def _backquote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


# Servers this process started; whatever still runs at interpreter exit is stopped.
_STARTED: list[_Server] = []


@atexit.register
def _stop_started() -> None:
    for server in _STARTED:
        if server.is_running():
            try:
                server.stop()
            except ServerError:
                server.kill()


# --- CLI ------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(directory: Path | None) -> None:
    """Starts both servers with a `twostep` database, prints their configs, waits, stops."""
    base = directory or Path(tempfile.mkdtemp(prefix="twostep-dbs-"))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    servers: list[_Server] = []
    try:
        servers = [PostgresServer(base / "postgres"), MariaDBServer(base / "mariadb")]
        for server in servers:
            server.start()
            server.create_database("twostep", exist_ok=True)
            print(json.dumps(server.config("twostep")), flush=True)
        where = ", ".join(f"{s.name} on {s.host}:{s.port}" for s in servers)
        print(f"{where} (data in {base}); Ctrl-C to stop.", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start both servers until Ctrl-C")
    up_parser.add_argument("--dir", type=Path, help="data directory (default: temporary)")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.dir)


if __name__ == "__main__":
    main()
