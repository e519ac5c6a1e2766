"""A private, throwaway PostgreSQL 15 server (Debian's binaries in /usr/lib/postgresql/15/bin).

Settings that twostep needs and tests rely on: `max_prepared_transactions` 64, `fsync` on,
`max_connections` 200 (`settings=` changes them, e.g. a benchmark's larger limits); trust
authentication for the `postgres` superuser on 127.0.0.1 and its own socket directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ._processes import HOST
from ._server import Server

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresServer(Server):
    name = "PostgreSQL"
    os_user = "postgres"
    package = "postgresql-15"
    stop_signal = signal.SIGINT  # "fast" shutdown: does not wait for idle client sessions
    _initialized_marker = "PG_VERSION"
    _own_settings = frozenset(
        {"port", "listen_addresses", "unix_socket_directories", "data_directory", "config_file"}
    )

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

    @classmethod
    def _as_service_user(cls, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        # PostgreSQL refuses to run as root. setpriv (util-linux) execs the command in place,
        # so the process id stays the server's.
        account = pwd.getpwnam(cls.os_user)
        return [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
            *command,
        ]

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
            **self.settings,
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
