"""The pytest plugin of twostep (entry point `pytest11: twostep = twostep.testing.plugin`).

pytest loads it in every session of an environment where twostep is installed; it only
defines fixtures, and nothing starts (nor is a database driver imported) until a test asks
for one. A fixture of the same name in the application's own conftest.py or test module wins.

Servers (session-scoped, started once when first asked for, stopped at the end):
- `pg_server`: a private PostgreSQL 15 (`PostgresServer`) on a free 127.0.0.1 port.
- `maria_server`: a private MariaDB 10.11 (`MariaDBServer`) on a free 127.0.0.1 port.

Per test:
- `pg`, `maria`: the same servers, restarted first if an earlier test killed them.
- `pg_config`, `maria_config`: a twostep client config dict for a new, empty database,
  dropped after the test together with any prepared transactions left behind;
  `pg_config2`, `maria_config2`: a second one on the same server.
- `coordinator_factory`: makes coordinator processes (`CoordinatorProcess`), e.g.
  `coordinator_factory(resources={"orders": pg_config}, settings={"recovery_grace_s": 0})`;
  every one is stopped at teardown.
- `coordinator`: one started coordinator process on a fresh data dir, no resources.

`fresh_config(request, dialect, path)` gives the config fixture of a dialect named at run time
(for tests parametrized over `DIALECTS`); `factories` builds more fixtures of these kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import factories

if TYPE_CHECKING:
    from ._coordinator import CoordinatorProcess

__all__ = ["DIALECTS", "fresh_config"]

#: Every dialect, by `Connection.dialect.name`.
DIALECTS = ("postgresql", "mysql", "sqlite")

pg_server = factories.postgres_server()
maria_server = factories.mariadb_server()
pg = factories.running_server("pg_server")
maria = factories.running_server("maria_server")
pg_config = factories.database("pg_server")
maria_config = factories.database("maria_server")
pg_config2 = factories.database("pg_server")
maria_config2 = factories.database("maria_server")
coordinator_factory = factories.coordinator_factory()


@pytest.fixture
def coordinator(coordinator_factory: Callable[..., CoordinatorProcess]) -> CoordinatorProcess:
    """One started coordinator process on a fresh data dir (no resources registered)."""
    return coordinator_factory()


def fresh_config(request: pytest.FixtureRequest, dialect: str, path: Path) -> dict[str, Any]:
    """A client config for a new, empty database of `dialect` (`pg_config`, `maria_config`);
    SQLite: the file `path`."""
    if dialect == "postgresql":
        return dict(request.getfixturevalue("pg_config"))
    if dialect == "mysql":
        return dict(request.getfixturevalue("maria_config"))
    return {"driver": "sqlite", "database": str(path)}
