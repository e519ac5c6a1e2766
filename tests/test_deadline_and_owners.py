"""The coordinator's deadline is the deadline; recovery can always name a branch's owner.

Every timeout of a branch (PostgreSQL's lock_timeout, MariaDB's innodb_lock_wait_timeout and
wait_timeout) derives from the deadline the coordinator granted, which may be shorter than the
block asked for (its max_timeout). A MariaDB branch's session is registered with the
coordinator before the branch is prepared (with Begin, or Enlist for a later branch), so a
recovery that must abort an orphan held by a frozen client knows which session to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from scripted_coordinator import Meanwhile, ScriptedCoordinator
from test_recovery import Databases, dbs_fixture, in_process_fixture, shop_fixture, wait_until  # noqa: F401

from twostep.client import (
    ConnectionManager,
    Transaction,
    TransactionAborted,
    get_connection,
    global_transaction,
)
from twostep.client.tpc import Xid
from twostep.coordinator.log import State
from twostep.coordinator.recovery import RECOVERY_ABORT_REASON
from twostep.testing._processes import is_stopped


def mariadb_timeouts() -> tuple[int, int]:
    [(lock_wait, idle)] = get_connection("billing").execute(
        "SELECT @@session.innodb_lock_wait_timeout, @@session.wait_timeout"
    )
    return int(lock_wait), int(idle)


def postgres_lock_timeout_ms() -> int:
    [(shown,)] = get_connection("orders").execute("SHOW lock_timeout")
    assert shown.endswith("ms"), shown
    return int(shown.removesuffix("ms"))


def test_a_mariadb_branch_takes_its_timeouts_from_the_granted_deadline(shop, in_process):
    coordinator = in_process(max_timeout_ms=2_000, default_timeout_ms=2_000)
    with global_transaction(coordinator=coordinator.server.address, timeout=30):
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
        lock_wait, idle = mariadb_timeouts()
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        pg_lock_timeout = postgres_lock_timeout_ms()
    assert lock_wait == 2  # not 30: the coordinator granted 2 s
    assert idle == lock_wait + 5  # the server ends a frozen client's session soon after
    assert 0 < pg_lock_timeout <= 2_000


def test_a_postgres_branch_begun_before_begin_is_cut_to_the_granted_deadline(shop, in_process):
    coordinator = in_process(max_timeout_ms=2_000, default_timeout_ms=2_000)
    with global_transaction(coordinator=coordinator.server.address, timeout=30):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        before = postgres_lock_timeout_ms()  # the block's own deadline: nobody asked yet
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")  # Begin: 2 s
        after = postgres_lock_timeout_ms()
    assert before > 20_000
    assert 0 < after <= 2_000
    assert shop.rows("orders") == shop.rows("billing") == {1}


def test_every_mariadb_branch_names_its_session_and_only_commit_reaches_the_coordinator(
    shop, in_process, maria_config2
):
    # Recovery must be able to name the session holding a branch it has to finish, also for
    # an orphan the coordinator never heard of: the xid's bqual carries it (resource#session).
    ConnectionManager.configure("ledger", maria_config2)
    get_connection("ledger").execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
    coordinator = in_process()
    prepared: list[Xid] = []

    def look(gtrid: str) -> None:  # between the decision and phase 2: both are prepared
        prepared.extend(x for x in shop.prepared("billing") if x.gtrid == gtrid)

    proxy = ScriptedCoordinator(coordinator.server.address, [Meanwhile(look)])
    sessions = {}
    try:
        with global_transaction(coordinator=proxy.address):
            for name in ("billing", "ledger"):
                get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
                [(sessions[name],)] = get_connection(name).execute("SELECT CONNECTION_ID()")
    finally:
        proxy.close()
    assert sorted((x.resource, x.session_id) for x in prepared) == sorted(sessions.items())
    # No Begin, nothing before PREPARE (the Ack, sent after phase 2, may have gone too).
    assert set(proxy.requests) - {"Ack"} == {"Describe", "Commit"}


_FROZEN_CLIENT = """
import json, sys
from twostep.client import (
    ConnectionManager,
    Transaction,
    TransactionAborted,
    get_connection,
    global_transaction,
)
from twostep.client.tpc import Xid
for name, config in json.loads(sys.argv[1]).items():
    ConnectionManager.configure(name, config)
with global_transaction(coordinator=sys.argv[2], timeout=20) as gtx:
    for name in ("billing", "ledger"):
        get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
"""


def test_an_orphan_held_by_a_frozen_client_is_aborted_and_its_registered_session_ended(
    shop, in_process, maria_config2
):
    # Both MariaDB branches are prepared and attached to the live sessions of a client that
    # froze before sending Commit. Recovery decides ABORT (past the deadline), finds the
    # branches held, and ends the sessions the client registered, then rolls back.
    ConnectionManager.configure("ledger", maria_config2)
    get_connection("ledger").execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
    configs = {"billing": shop.configs["billing"], "ledger": maria_config2}
    coordinator = in_process(kill_grace_ms=0)
    client = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_CLIENT, json.dumps(configs), coordinator.server.address],
        env={**os.environ, "TWOSTEP_FAILPOINTS": "client.before_commit_request=stop"},
    )
    try:
        wait_until(lambda: is_stopped(client.pid), timeout=30, what="the client froze")
        [gtrid] = {x.gtrid for x in shop.prepared("billing")}
        coordinator.clock.advance(60_000)  # past the deadline
        coordinator.recovery.run_pass(eager=True)  # first sighting
        report = coordinator.recovery.run_pass(eager=True)  # decide ABORT, end the owners
        assert not report.in_doubt, "\n".join(map(str, report.actions))
        record = coordinator.server.decision_log.get(gtrid)
        assert record.state is State.ABORTED and record.reason == RECOVERY_ABORT_REASON
        assert all(b.session_id for b in record.branches), record.branches
        kills = [n for n in coordinator.server.decision_log.notes(gtrid) if n.kind == "kill"]
        assert len(kills) == 2
        assert not shop.prepared("billing")
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.send_signal(signal.SIGKILL)
        client.wait(10)
    assert shop.rows("billing") == set()
    # The ledger branch was rolled back with it.
    with contextlib.closing(shop.maria.admin_connect(maria_config2["database"])) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM t")
            assert cur.fetchone() == (0,)


# -- the deadline also bounds a transaction that needs no decision --------------------------------


@pytest.mark.parametrize("name", ["billing", "orders"])
def test_a_single_writer_past_the_deadline_is_rolled_back_not_committed(shop, in_process, name):
    # One writing branch commits with one phase and no word to the coordinator: the deadline
    # is checked by the client, as for two (the issue: a MariaDB-only block that overran its
    # deadline committed, while the log said it expired).
    coordinator = in_process()
    with pytest.raises(TransactionAborted, match="deadline passed"):
        with global_transaction(coordinator=coordinator.server.address, timeout=0.5):
            get_connection(name).execute("INSERT INTO t (id) VALUES (1)")
            time.sleep(0.7)
    assert shop.rows(name) == set()


def test_a_postgres_branch_is_ended_by_the_server_if_its_client_stops_inside_it(shop, in_process):
    coordinator = in_process(max_timeout_ms=2_000, default_timeout_ms=2_000)
    with global_transaction(coordinator=coordinator.server.address, timeout=30):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")  # cuts to 2 s
        get_connection("orders").execute("SELECT 1")
        [(idle,)] = get_connection("orders").execute(
            "SELECT current_setting('idle_in_transaction_session_timeout')"
        )
        lock = postgres_lock_timeout_ms()
    # Like MySQL's wait_timeout: 5 s past the deadline, a session idle inside the
    # transaction (a frozen client holding row locks) is ended by the server.
    assert int(idle.removesuffix("ms")) == lock + 5_000


@pytest.mark.parametrize("bad", [0, -1, 86_401, float("nan"), float("inf"), "30", True, None])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused_before_anything_is_sent(shop, bad):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        with global_transaction(coordinator="127.0.0.1:9", timeout=bad):
            get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
    if bad is not None:
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            Transaction("orders", timeout=bad)
    assert shop.rows("orders") == set()
