"""A client killed between prepare and commit of a transaction over the application's own
sessions (tests/enlist_worker.py: psycopg + PyMySQL through `gtx.enlist`, or one SQLAlchemy
Session over two enlisted engines): the coordinator, which has both databases registered under
the resource names the client enlisted them as, finishes both branches the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_enlist_drivers import maria_connect, pg_connect

from twostep.client.tpc import FORMAT_ID, Xid
from twostep.client.tpc.failpoints import AFTER_DECISION, BEFORE_COMMIT_REQUEST
from twostep.testing import Admin

WORKER = Path(__file__).with_name("enlist_worker.py")
PG, MARIA = "enl_pg", "enl_maria"  # as in enlist_worker.py
#: Recovery when the test asks; a decided transaction is the coordinator's at once.
RECOVERY = {"recovery_interval_s": 30, "recovery_grace_s": 0, "kill_grace_s": 1}


@pytest.fixture
def databases(pg, maria, pg_config, maria_config):
    with pg_connect(pg_config, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT NOT NULL)")
    conn = maria_connect(maria_config)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE invoices (order_id INT PRIMARY KEY, amount INT) ENGINE=InnoDB"
            )
    finally:
        conn.close()
    return pg_config, maria_config


def prepared(pg_config, maria_config, gtrid: str) -> set[str]:
    """The resources holding a prepared branch of `gtrid`."""
    with pg_connect(pg_config, autocommit=True) as conn:
        gids = [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()]
    xids = [Xid.from_pg_gid(g) for g in gids]
    conn = maria_connect(maria_config)
    try:
        with conn.cursor() as cur:
            cur.execute("XA RECOVER")
            rows = [r for r in cur.fetchall() if r[0] == FORMAT_ID]
    finally:
        conn.close()
    xids += [Xid.from_mysql_recover(*r) for r in rows]
    return {x.resource for x in xids if x is not None and x.gtrid == gtrid}


def written(pg_config, maria_config) -> tuple[int, int]:
    with pg_connect(pg_config, autocommit=True) as conn:
        (orders,) = conn.execute("SELECT COUNT(*) FROM orders").fetchone()
    conn = maria_connect(maria_config)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM invoices")
            (invoices,) = cur.fetchone()
    finally:
        conn.close()
    return orders, invoices


@pytest.mark.parametrize("mode", ["drivers", "sqlalchemy"])
@pytest.mark.parametrize(
    ("failpoint", "decided", "rows"),
    [(AFTER_DECISION, "COMMITTED", (1, 1)), (BEFORE_COMMIT_REQUEST, "ABORTED", (0, 0))],
    ids=["after-decision", "before-commit-request"],
)
def test_client_killed_between_prepare_and_commit_is_finished_by_the_coordinator(
    databases, coordinator_factory, tmp_path, mode, failpoint, decided, rows
):
    pg_config, maria_config = databases
    coordinator = coordinator_factory(
        resources={PG: pg_config, MARIA: maria_config}, settings=RECOVERY
    )
    gtrid_file = tmp_path / "gtrid"
    settings = {
        "coordinator": coordinator.address,
        "pg": pg_config,
        "maria": maria_config,
        "mode": mode,
        "gtrid_file": str(gtrid_file),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
    env["TWOSTEP_FAILPOINTS"] = failpoint
    worker = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == -9, worker.stdout + worker.stderr
    gtrid = gtrid_file.read_text()
    # The client died with both branches prepared: nothing committed, nothing torn yet.
    assert prepared(pg_config, maria_config, gtrid) == {PG, MARIA}
    assert written(pg_config, maria_config) == (0, 0)

    give_up = time.monotonic() + 30
    with Admin(coordinator) as admin:
        while prepared(pg_config, maria_config, gtrid):
            assert time.monotonic() < give_up, "recovery left branches prepared"
            admin.recover()
            time.sleep(0.2)
    assert coordinator.get(gtrid).state_name == decided
    assert written(pg_config, maria_config) == rows  # both or neither
