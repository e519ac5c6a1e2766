"""Fixture factories: more servers, databases or coordinators than the plugin's defaults.

The shape of pytest-postgresql: a process fixture starts a private server once per session;
a client fixture gives each test a clean database on it. The plugin (twostep.testing.plugin)
builds its fixtures with these; a conftest.py can build more, e.g. a second PostgreSQL:

    from twostep.testing import factories

    pg_server_b = factories.postgres_server()
    pg_b = factories.running_server("pg_server_b")
    pg_config_b = factories.database("pg_b")

Nothing starts until a test asks for a fixture. Servers live in their own temporary
directories (not under pytest's basetemp: another pytest session starting meanwhile resets
the permissions of /tmp/pytest-of-<user>, and the servers run as their own OS users).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._coordinator import CoordinatorProcess
    from ._server import Server

__all__ = ["coordinator_factory", "database", "mariadb_server", "postgres_server", "running_server"]


def postgres_server() -> Callable[..., Iterator[Server]]:
    """A session-scoped fixture: a private PostgreSQL 15 (`PostgresServer`), started when a
    test first asks for it, stopped (its data removed) when the session ends."""

    def make(base_dir: Path) -> Server:
        from ._postgres import PostgresServer

        return PostgresServer(base_dir)

    return _server_fixture(make, "postgres", "A private PostgreSQL 15 (`PostgresServer`).")


def mariadb_server() -> Callable[..., Iterator[Server]]:
    """A session-scoped fixture: a private MariaDB 10.11 (`MariaDBServer`), started when a
    test first asks for it, stopped (its data removed) when the session ends."""

    def make(base_dir: Path) -> Server:
        from ._mariadb import MariaDBServer

        return MariaDBServer(base_dir)

    return _server_fixture(make, "mariadb", "A private MariaDB 10.11 (`MariaDBServer`).")


def _server_fixture(
    make: Callable[[Path], Server], kind: str, doc: str
) -> Callable[..., Iterator[Server]]:
    def server_fixture() -> Iterator[Server]:
        base_dir = Path(tempfile.mkdtemp(prefix=f"twostep-{kind}-"))
        try:
            server = make(base_dir)  # raises ServerError if the binaries are missing
            try:
                server.start()
                yield server
            finally:
                server.stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)

    server_fixture.__doc__ = f"{doc} Started once per session, when first asked for."
    return pytest.fixture(scope="session")(server_fixture)


def running_server(server_fixture: str) -> Callable[..., Server]:
    """A function-scoped fixture: the server of `server_fixture`, restarted first if an
    earlier test killed it (same data dir and port)."""

    def running(request: pytest.FixtureRequest) -> Server:
        return _running(request.getfixturevalue(server_fixture))

    running.__doc__ = f"The server of `{server_fixture}`, restarted first if a test killed it."
    return pytest.fixture(running)


def database(server_fixture: str) -> Callable[..., Iterator[dict[str, Any]]]:
    """A function-scoped fixture: a twostep client config dict (driver, host, port, database,
    username, password) for a new, empty database on the server of `server_fixture`. After
    the test, the prepared transactions left in it are rolled back (on MariaDB, every one on
    the server: XA RECOVER does not say which database a branch touched) and it is dropped; a
    server the test killed is restarted for that."""

    def fresh_database(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
        server = _running(request.getfixturevalue(server_fixture))
        name = f"t_{uuid.uuid4().hex[:16]}"
        server.create_database(name)
        try:
            yield server.config(name)
        finally:
            _drop(server, name)

    fresh_database.__doc__ = (
        f"A client config for a new, empty database on `{server_fixture}`, dropped after the "
        "test with any prepared transactions left in it."
    )
    return pytest.fixture(fresh_database)


def coordinator_factory() -> Callable[..., Iterator[Callable[..., CoordinatorProcess]]]:
    """A function-scoped fixture that makes coordinator processes (`CoordinatorProcess`) under
    the test's tmp_path; every one is stopped at teardown, even when the test fails."""

    def factory(tmp_path: Path) -> Iterator[Callable[..., CoordinatorProcess]]:
        from ._coordinator import coordinator_processes

        with coordinator_processes(tmp_path) as make:
            yield make

    factory.__doc__ = (
        "Starts coordinator processes: `coordinator_factory(resources={'orders': pg_config}, "
        "settings={'recovery_grace_s': 0}, failpoints=..., start=True)`; all are stopped at "
        "teardown, even if the test fails."
    )
    return pytest.fixture(factory)


def _running(server: Server) -> Server:
    # ping() too: right after an outside SIGKILL the process may still exist, refusing clients.
    if not (server.is_running() and server.ping()):
        server.restart()
    return server


def _drop(server: Server, name: str) -> None:
    """Leaves nothing prepared behind: on MariaDB, XA RECOVER is server-wide and a leftover
    branch would show up in the next test. A server the test killed is restarted for that."""
    try:
        _running(server)
        server.rollback_prepared(name)
        server.drop_database(name)
    except Exception as exc:
        warnings.warn(f"{server.name}: could not drop test database {name}: {exc}", stacklevel=1)
