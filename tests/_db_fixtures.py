"""pytest fixtures: private PostgreSQL and MariaDB servers, and a fresh database per test.

Loaded from tests/conftest.py with `pytest_plugins = ["_db_fixtures"]`.

- `pg_server`, `maria_server` (session): started once, stopped at session end.
- `pg`, `maria` (function): the same servers, restarted first if an earlier test killed them.
- `pg_config`, `maria_config` (function): a twostep client config for a new, empty database,
  dropped after the test together with any prepared transactions left behind;
  `pg_config2`, `maria_config2`: a second one on the same server.
- `fresh_config(request, dialect, path)`: the same for a dialect named at run time (SQLite: a
  file at `path`), for tests parametrized over `DIALECTS`.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from throwaway_dbs import MariaDBServer, PostgresServer

ServerT = TypeVar("ServerT", PostgresServer, MariaDBServer)

#: Every dialect, by `Connection.dialect.name`.
DIALECTS = ("postgresql", "mysql", "sqlite")


def fresh_config(request: pytest.FixtureRequest, dialect: str, path: Path) -> dict[str, Any]:
    """A client config for a new, empty database of `dialect`; SQLite: the file `path`."""
    if dialect == "postgresql":
        return dict(request.getfixturevalue("pg_config"))
    if dialect == "mysql":
        return dict(request.getfixturevalue("maria_config"))
    return {"driver": "sqlite", "database": str(path)}


def _session_server(kind: type[ServerT]) -> Iterator[ServerT]:
    # Not under pytest's basetemp: another pytest session starting meanwhile resets the
    # permissions of /tmp/pytest-of-<user>, and the servers run as their own OS users.
    base = Path(tempfile.mkdtemp(prefix=f"twostep-{kind.__name__.lower()}-"))
    server = kind(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _running(server: ServerT) -> ServerT:
    # ping() too: right after an outside SIGKILL the process may still exist, refusing clients.
    if not (server.is_running() and server.ping()):
        server.restart()
    return server


def _fresh_database(server: PostgresServer | MariaDBServer) -> Iterator[dict[str, Any]]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    server.create_database(name)
    try:
        yield server.config(name)
    finally:
        _drop(server, name)


def _drop(server: PostgresServer | MariaDBServer, name: str) -> None:
    """Leaves nothing prepared behind: on MariaDB, XA RECOVER is server-wide and a leftover
    branch would show up in the next test. A server the test killed is restarted for that."""
    try:
        _running(server)
        server.rollback_prepared(name)
        server.drop_database(name)
    except Exception as exc:
        warnings.warn(f"{server.name}: could not drop test database {name}: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    yield from _session_server(PostgresServer)


@pytest.fixture(scope="session")
def maria_server() -> Iterator[MariaDBServer]:
    yield from _session_server(MariaDBServer)


@pytest.fixture
def pg(pg_server: PostgresServer) -> PostgresServer:
    return _running(pg_server)


@pytest.fixture
def maria(maria_server: MariaDBServer) -> MariaDBServer:
    return _running(maria_server)


@pytest.fixture
def pg_config(pg: PostgresServer) -> Iterator[dict[str, Any]]:
    yield from _fresh_database(pg)


@pytest.fixture
def maria_config(maria: MariaDBServer) -> Iterator[dict[str, Any]]:
    yield from _fresh_database(maria)


@pytest.fixture
def pg_config2(pg: PostgresServer) -> Iterator[dict[str, Any]]:
    """A second fresh database on the same PostgreSQL (a third branch of one transaction)."""
    yield from _fresh_database(pg)


@pytest.fixture
def maria_config2(maria: MariaDBServer) -> Iterator[dict[str, Any]]:
    """A second fresh database on the same MariaDB."""
    yield from _fresh_database(maria)
