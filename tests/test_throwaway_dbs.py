"""The throwaway servers (twostep.testing): own settings and ports, crash (SIGKILL) and restart
keep data and prepared transactions, leftovers are cleaned up, and the CLI starts and stops
both."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from twostep.testing import MariaDBServer, PostgresServer
from twostep.testing._processes import pids_with_cwd

MACHINE_PORTS = (5432, 3306)
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "throwaway_dbs.py"


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A base dir for servers made by the test itself. Not tmp_path: another pytest session
    starting meanwhile resets the permissions of /tmp/pytest-of-<user>, and the servers run
    as their own OS users (the plugin's servers live outside it for the same reason)."""
    base = Path(tempfile.mkdtemp(prefix="twostep-test-servers-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _pids_in(data_dir: Path) -> list[int]:
    return pids_with_cwd(data_dir.resolve())


def _maria_connect(config: dict[str, Any]) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=config["host"],
        port=config["port"],
        user=config["username"],
        password=config["password"],
        database=config["database"],
    )


def _pg_connect(config: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=config["host"],
        port=config["port"],
        user=config["username"],
        password=config["password"],
        dbname=config["database"],
    )


def test_postgres_is_private_and_configured(pg: PostgresServer, pg_config: dict[str, Any]) -> None:
    assert pg.port not in MACHINE_PORTS
    assert pg_config == {
        "driver": "postgresql",
        "host": "127.0.0.1",
        "port": pg.port,
        "database": pg_config["database"],
        "username": "postgres",
        "password": "",
    }
    with _pg_connect(pg_config) as conn:
        assert conn.execute("SHOW max_prepared_transactions").fetchone() == ("64",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW data_directory").fetchone() == (str(pg.data_dir),)
        assert conn.execute("SELECT current_database()").fetchone() == (pg_config["database"],)


def test_mariadb_is_private_and_configured(
    maria: MariaDBServer, maria_config: dict[str, Any]
) -> None:
    assert maria.port not in MACHINE_PORTS
    assert maria_config == {
        "driver": "mysql",
        "host": "127.0.0.1",
        "port": maria.port,
        "database": maria_config["database"],
        "username": "twostep",
        "password": "twostep",
    }
    names = ("log_bin", "sync_binlog", "innodb_flush_log_at_trx_commit", "port")
    with _maria_connect(maria_config) as conn, conn.cursor() as cur:  # over TCP, as twostep
        cur.execute("SHOW VARIABLES WHERE Variable_name IN %s", [names])
        assert dict(cur.fetchall()) == {
            "log_bin": "ON",
            "sync_binlog": "1",
            "innodb_flush_log_at_trx_commit": "1",
            "port": str(maria.port),
        }
        cur.execute("SELECT DATABASE(), CURRENT_USER()")
        assert cur.fetchone() == (maria_config["database"], "twostep@127.0.0.1")


def test_postgres_kill_restart_keeps_committed_and_prepared(
    pg: PostgresServer, pg_config: dict[str, Any]
) -> None:
    with _pg_connect(pg_config) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("PREPARE TRANSACTION 'tws_kill'")
    port = pg.port
    pg.kill()
    assert not pg.is_running()
    assert _pids_in(pg.data_dir) == []  # children of the postmaster are gone too

    pg.restart()
    assert pg.port == port
    with pg.admin_connect(pg_config["database"]) as conn:
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]
        prepared = conn.execute("SELECT gid, database FROM pg_prepared_xacts").fetchall()
        assert prepared == [("tws_kill", pg_config["database"])]
        conn.execute("COMMIT PREPARED 'tws_kill'")
        assert conn.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,)]


def test_mariadb_kill_restart_keeps_committed_and_prepared(
    maria: MariaDBServer, maria_config: dict[str, Any]
) -> None:
    with _maria_connect(maria_config) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        for statement in ("XA START 'tws_kill'", "INSERT INTO t VALUES (2)", "XA END 'tws_kill'"):
            cur.execute(statement)
        cur.execute("XA PREPARE 'tws_kill'")
        port = maria.port
        maria.kill()  # while the owner session is still connected
    assert not maria.is_running()
    assert _pids_in(maria.data_dir) == []

    maria.restart()
    assert maria.port == port
    with maria.admin_connect(maria_config["database"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM t")
        assert cur.fetchall() == ((1,),)
        cur.execute("XA RECOVER")
        assert cur.fetchall() == ((1, 8, 0, b"tws_kill"),)
        cur.execute("XA COMMIT 'tws_kill'")
        cur.execute("SELECT id FROM t ORDER BY id")
        assert cur.fetchall() == ((1,), (2,))


def test_mariadb_left_killed_with_a_prepared_branch(
    maria: MariaDBServer, maria_config: dict[str, Any]
) -> None:
    """Leaves the server dead with a prepared branch; the next test checks the cleanup."""
    with _maria_connect(maria_config) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY) ENGINE=InnoDB")
        for statement in ("XA START 'tws_left'", "INSERT INTO t VALUES (1)", "XA END 'tws_left'"):
            cur.execute(statement)
        cur.execute("XA PREPARE 'tws_left'")
        os.kill(maria.pid or 0, signal.SIGKILL)  # behind the server object's back


def test_next_test_gets_a_running_clean_server(maria: MariaDBServer) -> None:
    assert maria.is_running()
    with maria.admin_connect() as conn, conn.cursor() as cur:
        cur.execute("XA RECOVER")
        assert cur.fetchall() == ()


def test_a_new_instance_replaces_a_stale_server(server_dir: Path) -> None:
    first = PostgresServer(server_dir)
    first.start()
    stale = first.pid
    second = PostgresServer(server_dir)  # as if the first run had crashed and left it running
    try:
        assert not first.is_running()
        assert stale not in _pids_in(first.data_dir)
        second.start()
        assert second.is_running()
    finally:
        second.stop()
    assert _pids_in(second.data_dir) == []


def test_postgres_settings_replace_and_add_to_the_defaults(server_dir: Path) -> None:
    server = PostgresServer(
        server_dir, settings={"max_prepared_transactions": 300, "max_connections": 250}
    )
    server.start()
    try:
        with server.admin_connect() as conn:
            assert conn.execute("SHOW max_prepared_transactions").fetchone() == ("300",)
            assert conn.execute("SHOW max_connections").fetchone() == ("250",)
            assert conn.execute("SHOW fsync").fetchone() == ("on",)  # the rest stay
    finally:
        server.stop()


def test_mariadb_settings_replace_and_add_to_the_defaults(server_dir: Path) -> None:
    settings = {"max_connections": 321, "innodb-buffer-pool-size": "128M"}  # either spelling
    server = MariaDBServer(server_dir, settings=settings)
    server.start()
    try:
        names = ("max_connections", "innodb_buffer_pool_size", "sync_binlog")
        with server.admin_connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW VARIABLES WHERE Variable_name IN %s", [names])
            assert dict(cur.fetchall()) == {
                "max_connections": "321",
                "innodb_buffer_pool_size": str(128 * 1024 * 1024),
                "sync_binlog": "1",
            }
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("server_class", "settings", "why"),
    [
        (PostgresServer, {"port": 5432}, "chosen by the throwaway server itself"),
        (PostgresServer, {"unix-socket-directories": "/tmp"}, "chosen by the throwaway server"),
        (MariaDBServer, {"datadir": "/var/lib/mysql"}, "chosen by the throwaway server itself"),
        (MariaDBServer, {"bind-address": "0.0.0.0"}, "chosen by the throwaway server itself"),
        (MariaDBServer, {"max connections": 10}, "not a setting name"),
        (PostgresServer, {"fsync=off -c x": 1}, "not a setting name"),
        (PostgresServer, {"": 1}, "not a setting name"),
        (PostgresServer, {"Max_Connections": 10}, "not a setting name"),
        (PostgresServer, {"fsync": False}, "must be a str or int"),
        (MariaDBServer, {"max_connections": 1.5}, "must be a str or int"),
    ],
)
def test_a_setting_the_server_owns_or_cannot_take_is_refused(
    server_dir: Path, server_class: type[PostgresServer | MariaDBServer], settings: Any, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        server_class(server_dir, settings=settings)
    assert list(server_dir.iterdir()) == []  # refused before anything was made


@pytest.mark.parametrize(
    "command",
    [[str(SCRIPT)], ["-m", "twostep.testing"]],
    ids=["scripts/throwaway_dbs.py", "python -m twostep.testing"],
)
def test_cli_up_prints_configs_and_stops_on_sigterm(server_dir: Path, command: list[str]) -> None:
    with subprocess.Popen(
        [sys.executable, *command, "up", "--dir", str(server_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            configs = [json.loads(proc.stdout.readline()) for _ in range(2)]
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert [c["driver"] for c in configs] == ["postgresql", "mysql"]
    assert all(c["database"] == "twostep" and c["port"] not in MACHINE_PORTS for c in configs)
    assert _pids_in(server_dir / "postgres" / "pgdata") == []
    assert _pids_in(server_dir / "mariadb" / "data") == []


# A process with gRPC channels in use (a test process, a benchmark) starts servers as their
# service user. A fork() there runs gRPC's at-fork handlers in the child, which restart its
# poller threads before exec; one of them then died on the descriptors the child closes
# (CI: "PostgreSQL exited while starting", epoll_wait EBADF). Popen's user=/group= forced
# that fork; ~1 spawn in 100 died that way.
_SPAWN_UNDER_BUSY_GRPC = """
import os, subprocess, sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from twostep.testing import PostgresServer

server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()

def call_forever():
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    while True:
        stub.Check(health_pb2.HealthCheckRequest())

for _ in range(4):
    threading.Thread(target=call_forever, daemon=True).start()
command = PostgresServer._as_service_user(["id", "-u"])
outputs = set()
for _ in range(int(sys.argv[1])):
    spawned = subprocess.run(command, capture_output=True, start_new_session=True)
    outputs.add((spawned.returncode, spawned.stdout + spawned.stderr))
print(repr(outputs))
sys.stdout.flush()
os._exit(0)
"""


def test_servers_start_as_their_user_from_a_process_whose_grpc_channels_are_busy() -> None:
    runs = 600
    result = subprocess.run(
        [sys.executable, "-c", _SPAWN_UNDER_BUSY_GRPC, str(runs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert result.stdout.strip() == repr({(0, f"{uid}\n".encode())})
