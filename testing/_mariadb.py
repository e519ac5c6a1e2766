"""A private, throwaway MariaDB 10.11 server (Debian's mariadbd and mariadb-install-db).

Durable settings, as in production: InnoDB with `innodb_flush_log_at_trx_commit=1`, the binary
log on with `sync_binlog=1` (`settings=` adds or changes server options, e.g.
`max_connections`). Clients use the account `twostep`/`twostep` on 127.0.0.1; the
admin connection is root over the instance's own socket file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pymysql

from ._processes import HOST
from ._server import Server

MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")


class MariaDBServer(Server):
    name = "MariaDB"
    os_user = "mysql"
    package = "mariadb-server"
    stop_signal = signal.SIGTERM  # clean shutdown
    _initialized_marker = "mysql"
    _own_settings = frozenset(
        {"datadir", "socket", "pid_file", "port", "bind_address", "log_error", "user", "tmpdir"}
    )
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
            f"--tmpdir={self.base_dir}",  # passed on to the bootstrap server (see below)
            "--auth-root-authentication-method=normal",  # root@localhost, empty password
            "--skip-test-db",
            "--skip-name-resolve",
            *self._user_option(),
        ]

    def _server_command(self) -> list[str]:
        settings: dict[str, str | int] = {
            "log_bin": str(self.base_dir / "binlog"),
            "server_id": 1,
            "sync_binlog": 1,
            "innodb_flush_log_at_trx_commit": 1,
            "innodb_buffer_pool_size": "64M",
            **self.settings,
        }
        return [
            str(MARIADBD),
            "--no-defaults",  # must come first
            f"--datadir={self.data_dir}",
            # Not the shared /tmp: another instance (or a /tmp cleaner) there once deleted a
            # temporary table file of the bootstrap server and mariadb-install-db failed.
            f"--tmpdir={self.base_dir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            *(f"--{name.replace('_', '-')}={value}" for name, value in settings.items()),
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
