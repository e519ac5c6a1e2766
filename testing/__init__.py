"""twostep.testing: private databases, a coordinator process and crashes, for tests.

What an application's tests (and twostep's own) use to test cross-database code against real
servers:
- `PostgresServer`, `MariaDBServer`: throwaway PostgreSQL 15 / MariaDB 10.11 servers on free
  127.0.0.1 ports with their own data dirs (`kill()` is a crash, `restart()` brings the same
  data back on the same port). `python -m twostep.testing up` starts both by hand.
- `CoordinatorProcess`: `python -m twostep.coordinator` in its own process; `settle()` runs
  recovery until nothing of its cluster is prepared. `Admin` calls its Admin service.
- `crash_at`, `run_in_process`, `start_in_process`: run a function in a fresh interpreter
  with failpoints armed (twostep.client.tpc.failpoints), e.g. killed between prepare and commit.
- `twostep.testing.demo`: `twostep demo`, for a newcomer: transfers across both servers and a
  coordinator SIGKILLed halfway, checked at the end (the `twostep` CLI adds the command
  through the entry point group `twostep.commands`).
- The pytest plugin `twostep.testing.plugin` (loaded by pytest through the `pytest11` entry
  point) gives the fixtures `pg_server`, `maria_server`, `pg`, `maria`, `pg_config`,
  `maria_config`, `pg_config2`, `maria_config2`, `coordinator_factory`, `coordinator`;
  `factories` makes more of them.

Names are imported on first use (PEP 562), so that loading the plugin in a pytest session
that uses none of its fixtures imports no database driver and no gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._admin import Admin
    from ._child import ChildProcess, ChildRun, crash_at, run_in_process, start_in_process
    from ._clock import FakeClock
    from ._coordinator import (
        CoordinatorProcess,
        TransactionView,
        config_toml,
        coordinator_processes,
    )
    from ._mariadb import MariaDBServer
    from ._postgres import PostgresServer
    from ._processes import ServerError, free_port
    from ._server import Server
    from .plugin import DIALECTS, fresh_config

__all__ = [
    "DIALECTS",
    "Admin",
    "ChildProcess",
    "ChildRun",
    "CoordinatorProcess",
    "FakeClock",
    "MariaDBServer",
    "PostgresServer",
    "Server",
    "ServerError",
    "TransactionView",
    "config_toml",
    "coordinator_processes",
    "crash_at",
    "free_port",
    "fresh_config",
    "run_in_process",
    "start_in_process",
]

# Where each public name lives (the TYPE_CHECKING imports above say the same for checkers).
_HOME = {
    "Admin": "._admin",
    "ChildProcess": "._child",
    "ChildRun": "._child",
    "crash_at": "._child",
    "run_in_process": "._child",
    "start_in_process": "._child",
    "FakeClock": "._clock",
    "CoordinatorProcess": "._coordinator",
    "TransactionView": "._coordinator",
    "config_toml": "._coordinator",
    "coordinator_processes": "._coordinator",
    "MariaDBServer": "._mariadb",
    "PostgresServer": "._postgres",
    "ServerError": "._processes",
    "free_port": "._processes",
    "Server": "._server",
    "DIALECTS": ".plugin",
    "fresh_config": ".plugin",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once found, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
