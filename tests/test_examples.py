"""Every script in examples/ runs to the end (exit 0) and says what it did, against the
throwaway PostgreSQL and MariaDB of this session (passed in as TWOSTEP_EXAMPLES_POSTGRESQL /
TWOSTEP_EXAMPLES_MARIADB, so the servers start once), the real RabbitMQ, and a coordinator
each script starts itself where it needs one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twostep.testing import Server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The line of each script's output that says it did what it shows.
KEY_LINES = {
    "batch_sync.py": "the next run resumed: copied 6, user_analytics=10",
    "compensation.py": "60 s later a worker ran 1 compensation; users: ['ann']",
    "connections.py": "refused in Transaction('main'): TwostepError",
    "event_driven.py": "after retry: worker ran 2, CRM notified of users [1, 2]",
    "heterogeneous_sources.py": "migrated cy: users has id 3, legacy_users has 1 left",
    "queue_sync.py": "consumed 3 messages: applied 2, skipped 1 duplicate",
    "realtime_sync.py": "analytics refused 'enterprise' (DatabaseError): users: pro,"
    " analytics_user_data: pro",
    "two_phase_commit.py": "rolled back (the welcome e-mail could not be queued): still users=1,"
    " user_analytics=1",
}


@pytest.fixture(scope="module")
def environment(pg_server: Server, maria_server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
    env["TWOSTEP_EXAMPLES_POSTGRESQL"] = json.dumps(pg_server.config("postgres"))
    env["TWOSTEP_EXAMPLES_MARIADB"] = json.dumps(maria_server.config("mysql"))
    return env


def test_every_example_is_run_here() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts - {"shop.py"} == set(KEY_LINES)


@pytest.mark.parametrize("script", sorted(KEY_LINES))
def test_the_example_runs_and_says_what_it_did(script: str, environment: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"{script} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    assert KEY_LINES[script] in run.stdout, run.stdout
