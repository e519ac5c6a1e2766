"""What every example shares: new databases as named connections and, where one is needed, a
coordinator that has them registered. Not part of the examples' story: each script's `main()`
starts after this has run.

    with example(postgresql=["users"], mariadb=["analytics"], coordinator=True) as ex:
        ...   # ConnectionManager has "users" and "analytics"; $TWOSTEP_COORDINATOR is set

Where the servers come from:
- by default, throwaway PostgreSQL 15 and MariaDB 10.11 servers (twostep.testing) started
  here on free 127.0.0.1 ports and removed at the end (a few seconds; nothing on 5432/3306 is
  touched);
- with TWOSTEP_EXAMPLES_POSTGRESQL / TWOSTEP_EXAMPLES_MARIADB set (a twostep client config as
  JSON, of an account that may create and drop databases, e.g. `pg.config("postgres")` of a
  `PostgresServer`), those servers: tests/test_examples.py starts them once for every script.

Either way each named connection gets a new database of its own (`ex_<name>_<8 hex>`), dropped
at the end. `coordinator=True` starts `python -m twostep.coordinator` (CoordinatorProcess) on a
free port with every one of them registered as a resource under its connection name, so that
its recovery could finish what a crashed client left, and sets $TWOSTEP_COORDINATOR, which
`global_transaction()` reads. TWOSTEP_EXAMPLES_BROKER is the RabbitMQ URL (default
amqp://guest:guest@127.0.0.1:5672/%2F: the examples namespace what they declare there and
delete it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostep.client import Connection, ConnectionManager
from twostep.testing import CoordinatorProcess, MariaDBServer, PostgresServer, Server

__all__ = ["Example", "example"]

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
# The server kinds by the config's driver: the variable that names a running one, the
# throwaway server to start otherwise, and the database its admin config connects to.
_SERVERS: Mapping[str, tuple[str, type[Server], str]] = {
    "postgresql": ("TWOSTEP_EXAMPLES_POSTGRESQL", PostgresServer, "postgres"),
    "mysql": ("TWOSTEP_EXAMPLES_MARIADB", MariaDBServer, "mysql"),
}


@dataclass(frozen=True)
class Example:
    """What a script gets: `configs` (connection name -> client config, already configured in
    ConnectionManager), `coordinator` (its address, or None when not asked for) and `broker`
    (the AMQP URL)."""

    configs: dict[str, dict[str, Any]]
    coordinator: str | None
    broker: str


@contextlib.contextmanager
def example(
    *,
    postgresql: Sequence[str] = (),
    mariadb: Sequence[str] = (),
    coordinator: bool = False,
) -> Iterator[Example]:
    """New databases named after the connections in `postgresql` and `mariadb`, configured
    in ConnectionManager; a coordinator with all of them registered if `coordinator`.
    Everything made here is dropped or stopped at the end, also when the block raises."""
    wanted = {"postgresql": list(postgresql), "mysql": list(mariadb)}
    with contextlib.ExitStack() as cleanup:
        base = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="twostep-ex-")))
        admins = _admin_configs([d for d, names in wanted.items() if names], base, cleanup)
        configs: dict[str, dict[str, Any]] = {}
        for driver, admin_config in admins.items():
            admin = Connection.from_config(f"examples-admin-{driver}", admin_config)
            cleanup.callback(admin.close_idle)  # after the drops below (last in, first out)
            for name in wanted[driver]:
                database = f"ex_{name}_{uuid.uuid4().hex[:8]}"
                _create_database(admin, database, cleanup)
                configs[name] = {**admin_config, "database": database}
        # Last in, first out: the connections' sessions close before their databases drop.
        cleanup.callback(ConnectionManager.close_all)
        for name, config in configs.items():
            ConnectionManager.configure(name, config)
        address = None
        if coordinator:
            process = CoordinatorProcess(base / "coordinator", resources=configs)
            cleanup.callback(process.stop)
            address = process.start().address
            os.environ["TWOSTEP_COORDINATOR"] = address
        yield Example(configs, address, os.environ.get("TWOSTEP_EXAMPLES_BROKER", BROKER))


def _admin_configs(
    drivers: Sequence[str], base: Path, cleanup: contextlib.ExitStack
) -> dict[str, dict[str, Any]]:
    """An admin client config per driver: from its TWOSTEP_EXAMPLES_* variable, else of a
    throwaway server started here (those at once: each takes seconds)."""
    configs: dict[str, dict[str, Any]] = {}
    to_start: list[tuple[str, Server]] = []
    for driver in drivers:
        variable, kind, _ = _SERVERS[driver]
        given = os.environ.get(variable)
        if given:
            configs[driver] = _parsed(variable, given, driver)
        else:
            to_start.append((driver, kind(base / driver)))  # ServerError: binaries missing
    if to_start:
        with ThreadPoolExecutor(len(to_start)) as pool:
            started = [pool.submit(server.start) for _, server in to_start]
        for _, server in to_start:
            cleanup.callback(server.stop)
        for future in started:
            future.result()  # raises a server's failure, once every stop is queued
        for driver, server in to_start:
            configs[driver] = server.config(_SERVERS[driver][2])
    return configs


def _parsed(variable: str, text: str, driver: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{variable} is not JSON ({exc}): {text!r}") from None
    if not isinstance(config, dict) or config.get("driver") != driver:
        raise SystemExit(f"{variable} must be a JSON object with driver {driver!r}: {text!r}")
    return config


def _create_database(admin: Connection, database: str, cleanup: contextlib.ExitStack) -> None:
    quoted = admin.dialect.quote(database)
    admin.execute(f"CREATE DATABASE {quoted}")
    # PostgreSQL refuses to drop a database with sessions on it; FORCE ends any left over.
    force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
    cleanup.callback(admin.execute, f"DROP DATABASE {quoted}{force}")
