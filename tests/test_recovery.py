"""Recovery against real PostgreSQL and MariaDB: orphans, unfinished phase 2, live sessions.

Branches are prepared by hand with the client's own branch operations and a gtrid from a real
Begin, then abandoned (their sessions closed, as when a client dies) or kept open (a live
MariaDB session holding its branch). The coordinator runs in its own process with a TOML
config and short intervals where the test is about what it does by itself; in-process (a
fake clock, passes run by the test) where the exact sequence of passes matters.

The helpers here are also used by test_admin.py.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pymysql
import pytest
from psycopg import sql

from twostep.client import Connection, ConnectionManager
from twostep.client.tpc import FORMAT_ID, Xid, new_gtrid, require_two_phase
from twostep.coordinator import CoordinatorServer, Settings
from twostep.coordinator._registry import parse_resources
from twostep.coordinator.recovery import RECOVERY_ABORT_REASON, Recovery
from twostep.coordinator.recovery.plan import unknown_resource
from twostep.testing import CoordinatorProcess, FakeClock
from twostep.v1 import admin_pb2 as apb
from twostep.v1 import admin_pb2_grpc as apb_grpc
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

COMMITTED = pb.TRANSACTION_STATE_COMMITTED
ABORTED = pb.TRANSACTION_STATE_ABORTED
TOKEN = "test-admin-token-" + secrets.token_hex(8)
RPC_TIMEOUT = 10.0
DIALECT = {"orders": "postgresql", "billing": "mysql"}


# -- databases ---------------------------------------------------------------------------------


@dataclass
class Databases:
    """'orders' on the throwaway PostgreSQL, 'billing' on MariaDB, each with a table t(id)."""

    pg: Any
    maria: Any
    configs: dict[str, dict[str, Any]]

    def resources_toml(self) -> str:
        lines = []
        for name, config in self.configs.items():
            lines.append(f"[resources.{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in config.items()]
            lines.append("")
        return "\n".join(lines)

    def resource_configs(self, tmp_path: Path) -> tuple[Any, ...]:
        return parse_resources(self.configs, source="test", environ={}, base_dir=tmp_path)

    # -- what the databases hold, seen with superuser sessions of their own

    def prepared(self, resource: str) -> set[Xid]:
        """Twostep xids prepared on the resource (MariaDB: server-wide)."""
        if resource == "orders":
            with self.pg.admin_connect(self.configs["orders"]["database"]) as conn:
                gids = [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts")]
            return {x for x in map(Xid.from_pg_gid, gids) if x is not None}
        with contextlib.closing(self.maria.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute("XA RECOVER")
            rows = cur.fetchall()
        return {x for x in (Xid.from_mysql_recover(*r) for r in rows) if x is not None}

    def rows(self, resource: str) -> set[int]:
        database = self.configs[resource]["database"]
        if resource == "orders":
            with self.pg.admin_connect(database) as conn:
                return {r[0] for r in conn.execute("SELECT id FROM t")}
        with contextlib.closing(self.maria.admin_connect(database)) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM t")
            return {r[0] for r in cur.fetchall()}


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


@pytest.fixture(name="dbs")
def dbs_fixture(pg, maria, pg_config, maria_config) -> Iterator[Databases]:
    databases = Databases(pg, maria, {"orders": pg_config, "billing": maria_config})
    with pg.admin_connect(pg_config["database"]) as conn:
        conn.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    database = maria_config["database"]
    with contextlib.closing(maria.admin_connect(database)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
    yield databases
    # pg_config / maria_config roll back whatever is left prepared and drop the databases.


@pytest.fixture(name="shop")
def shop_fixture(dbs: Databases) -> Iterator[Databases]:
    """`dbs`, with 'orders' and 'billing' configured as the application's connections."""
    ConnectionManager.configure("orders", dbs.configs["orders"])
    ConnectionManager.configure("billing", dbs.configs["billing"])
    yield dbs
    ConnectionManager.close_all()


@dataclass
class Held:
    """A branch prepared by hand; `session` is open only if the test keeps its owner alive."""

    xid: Xid
    session_id: int
    session: Any
    connection: Connection

    def branch(self) -> pb.Branch:
        name = self.connection.name
        return pb.Branch(
            resource=name, bqual=name, dialect=DIALECT[name], session_id=self.session_id
        )

    def close(self) -> None:
        if self.session is not None:
            self.connection.dialect.close(self.session)
            self.session = None


def prepare(
    dbs: Databases, resource: str, gtrid: str, row: int | None, *, keep: bool = False
) -> Held:
    """Prepare a branch of `gtrid` on `resource` with the client's branch operations, writing
    `row` into t (None: read-only); close its session unless `keep` (a client that died)."""
    connection = Connection.from_config(resource, dbs.configs[resource])
    ops = require_two_phase(connection.dialect.name, connection=resource)
    session = connection.connect()
    xid = Xid.of(gtrid, resource)
    ops.begin(session, xid, None)
    if row is None:
        connection.dialect.run(session, "SELECT COUNT(*) FROM t")
    else:
        connection.dialect.run(session, "INSERT INTO t (id) VALUES (?)", (row,))
    ops.prepare(session, xid)
    held = Held(xid, ops.session_id(session), session, connection)
    if not keep:
        held.close()
    return held


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or predicate}")
        time.sleep(0.05)


def new_cluster() -> str:
    return "r" + secrets.token_hex(4)


# -- coordinators ------------------------------------------------------------------------------


class Client:
    """The Coordinator and Admin stubs of one coordinator address."""

    def __init__(self, address: str, token: str = TOKEN):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.admin = apb_grpc.AdminStub(self.channel)
        self.auth = (("authorization", f"Bearer {token}"),)

    def begin(self, timeout_ms: int) -> str:
        """A new gtrid, once the log has its row: Begin answers before the row is written
        (presumed abort needs no durable Begin), and a read of it meanwhile is NOT_FOUND."""
        request = pb.BeginRequest(timeout_ms=timeout_ms)
        reply = self.stub.Begin(request, timeout=RPC_TIMEOUT, wait_for_ready=True)
        gtrid = reply.transactions[0].gtrid
        wait_until(lambda: self._known(gtrid), what=f"the log's row of {gtrid}")
        return gtrid

    def _known(self, gtrid: str) -> bool:
        try:
            self.get(gtrid)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    def commit(self, gtrid: str, branches: list[pb.Branch]) -> pb.Decision:
        item = pb.CommitItem(gtrid=gtrid, branches=branches)
        reply = self.stub.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        return reply.decisions[0]

    def get(self, gtrid: str) -> pb.Transaction:
        return self.stub.GetTransaction(pb.GetTransactionRequest(gtrid=gtrid), timeout=RPC_TIMEOUT)

    def status(self) -> apb.StatusResponse:
        return self.admin.Status(apb.StatusRequest(), metadata=self.auth, timeout=RPC_TIMEOUT)

    def show(self, gtrid: str) -> apb.TransactionDetail:
        request = apb.ShowTransactionRequest(gtrid=gtrid)
        return self.admin.ShowTransaction(request, metadata=self.auth, timeout=RPC_TIMEOUT)

    def recover(self, dry_run: bool = False) -> apb.RecoveryReport:
        request = apb.RecoverRequest(dry_run=dry_run)
        return self.admin.Recover(request, metadata=self.auth, timeout=60)

    def close(self) -> None:
        self.channel.close()


def start_process(
    coordinator_factory: Callable[..., CoordinatorProcess],
    tmp_path: Path,
    dbs: Databases,
    cluster: str,
    env: dict[str, str] | None = None,
    **settings: Any,
) -> CoordinatorProcess:
    """A coordinator process whose --config registers 'orders' and 'billing'."""
    values = {
        "cluster_id": cluster,
        "recovery_interval_s": 0.2,
        "recovery_grace_s": 0.5,
        "kill_grace_s": 30,
        "log_level": "DEBUG",
    } | settings
    config = tmp_path / f"coordinator-{cluster}.toml"
    coordinator = "\n".join(f"{k} = {_toml(v)}" for k, v in values.items())
    config.write_text(f"[coordinator]\n{coordinator}\n\n{dbs.resources_toml()}")
    env = {"TWOSTEP_ADMIN_TOKEN": TOKEN, **(env or {})}
    return coordinator_factory(args=["--config", str(config)], env=env)


@dataclass
class InProcess:
    server: CoordinatorServer
    client: Client
    clock: FakeClock

    @property
    def recovery(self) -> Recovery:
        return self.server.recovery

    def begin(self, timeout_ms: int = 30_000) -> str:
        return self.client.begin(timeout_ms)


@pytest.fixture(name="in_process")
def in_process_fixture(tmp_path: Path, dbs: Databases) -> Iterator[Callable[..., InProcess]]:
    """Starts in-process coordinators (fake clock, no recovery loop: the test runs passes).

    The interval only sets what a pass run by the test waits for a resource (its patience):
    30 s, so a scan slowed by a loaded machine is waited for, not reported stuck."""
    made: list[InProcess] = []

    def start(**settings: Any) -> InProcess:
        clock = FakeClock()
        base = Settings(
            listen="127.0.0.1:0",
            data_dir=tmp_path / f"coordinator-{len(made)}",
            cluster_id=new_cluster(),
            admin_token=TOKEN,
            recovery_grace_ms=1_000,
            recovery_interval_ms=30_000,
            kill_grace_ms=5_000,
            resources=dbs.resource_configs(tmp_path),
        )
        server = CoordinatorServer(replace(base, **settings), clock=clock, run_recovery=False)
        address = server.start()
        made.append(InProcess(server, Client(address), clock))
        return made[-1]

    yield start
    for coordinator in made:
        coordinator.client.close()
        coordinator.server.stop(1)


# -- orphans -----------------------------------------------------------------------------------


def test_orphans_past_their_deadline_get_a_durable_abort_and_are_rolled_back(
    coordinator_factory, tmp_path, dbs
):
    cluster = new_cluster()
    proc = start_process(coordinator_factory, tmp_path, dbs, cluster)
    client = Client(proc.address)
    # The deadline inside the gtrid: within 3 s, time for both branches to be prepared first
    # (an orphan seen with one branch prepared is aborted naming only that one).
    gtrid = client.begin(timeout_ms=3_000)
    held = [prepare(dbs, "orders", gtrid, 1), prepare(dbs, "billing", gtrid, 1)]

    for h in held:
        resource = h.connection.name
        wait_until(
            lambda r=resource, x=h.xid: x not in dbs.prepared(r), timeout=30, what=f"{resource}"
        )
    assert dbs.rows("orders") == dbs.rows("billing") == set()

    # The ABORT was decided (durably: it survives a SIGKILL) before the branches were rolled
    # back, and a late Commit is answered ABORTED.
    proc.kill()
    proc.restart()
    t = client.get(gtrid)
    assert t.state == ABORTED and t.reason == RECOVERY_ABORT_REASON
    assert sorted(b.resource for b in t.branches) == ["billing", "orders"]
    assert client.commit(gtrid, [h.branch() for h in held]).state == ABORTED
    assert "action=decide-abort" in proc.output and "action=rollback" in proc.output
    client.close()


def test_foreign_xids_are_never_touched(coordinator_factory, tmp_path, dbs):
    cluster = new_cluster()
    long_ago = int(time.time()) - 3600
    # Twostep branches of another cluster and of manual 2PC, and other XA users' branches,
    # all long past any deadline: recovery of `cluster` must leave every one alone.
    other = [
        prepare(dbs, "orders", new_gtrid("other", long_ago), 11),
        prepare(dbs, "billing", new_gtrid("other", long_ago), 11),
        prepare(dbs, "orders", new_gtrid("local", long_ago), 12),
    ]
    pg_database = dbs.configs["orders"]["database"]
    with dbs.pg.admin_connect(pg_database) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (id) VALUES (13)")
        conn.execute("PREPARE TRANSACTION 'not-twostep'")
    maria_db = dbs.configs["billing"]["database"]
    same_gtrid = other[1].xid.gtrid.encode().hex()  # a twostep gtrid under another format id
    for row, xid in ((13, "'not-twostep','b',1"), (14, f"X'{same_gtrid}',X'62',7")):
        # One session each: a session holding a prepared branch cannot start another one.
        with contextlib.closing(dbs.maria.admin_connect(maria_db)) as conn, conn.cursor() as cur:
            cur.execute(f"XA START {xid}")
            cur.execute("INSERT INTO t (id) VALUES (%s)", (row,))
            cur.execute(f"XA END {xid}")
            cur.execute(f"XA PREPARE {xid}")

    proc = start_process(coordinator_factory, tmp_path, dbs, cluster)
    client = Client(proc.address)
    client.recover()
    report = client.recover()  # two consecutive scans: any orphan of `cluster` would go now
    assert list(report.actions) == [] and list(report.errors) == []

    assert {h.xid for h in other[::2]} <= dbs.prepared("orders")
    assert other[1].xid in dbs.prepared("billing")
    with dbs.pg.admin_connect(pg_database) as conn:
        assert conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE gid = 'not-twostep'"
        ).fetchone()
    with contextlib.closing(dbs.maria.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute("XA RECOVER")
        format_ids = [r[0] for r in cur.fetchall()]
    assert format_ids.count(1) >= 1 and format_ids.count(7) >= 1
    assert format_ids.count(FORMAT_ID) >= 1
    client.close()


# -- phase 2 after the client died -------------------------------------------------------------


def test_a_commit_whose_client_died_before_phase_2_is_committed_and_completed(
    coordinator_factory, tmp_path, dbs
):
    proc = start_process(coordinator_factory, tmp_path, dbs, new_cluster())
    client = Client(proc.address)
    gtrid = client.begin(timeout_ms=30_000)
    held = [prepare(dbs, "orders", gtrid, 2), prepare(dbs, "billing", gtrid, 2)]
    assert client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    # ... and the client died: nobody runs COMMIT PREPARED, nobody acks.

    wait_until(lambda: client.get(gtrid).completed, what="completed")
    assert dbs.rows("orders") == dbs.rows("billing") == {2}
    assert held[0].xid not in dbs.prepared("orders")
    assert held[1].xid not in dbs.prepared("billing")
    counters = client.status().recovery_counters
    assert counters["committed"] >= 2 and counters["completed"] >= 1
    client.close()


def test_a_mariadb_branch_held_by_a_live_session_is_blocked_then_its_session_is_killed(
    coordinator_factory, tmp_path, dbs
):
    proc = start_process(coordinator_factory, tmp_path, dbs, new_cluster(), kill_grace_s=1.5)
    client = Client(proc.address)
    gtrid = client.begin(timeout_ms=1000)
    held = [prepare(dbs, "orders", gtrid, 3), prepare(dbs, "billing", gtrid, 3, keep=True)]
    assert client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    live = held[1]
    # The client is alive but stuck: its MariaDB session still holds the prepared branch.

    def blocked() -> str:
        branches = {b.branch.resource: b.on_database for b in client.show(gtrid).branches}
        return "blocked: live session" in branches["billing"] and branches["billing"]

    shown = wait_until(blocked, what="billing reported blocked")
    assert f"live session {live.session_id}" in shown and shown.startswith("prepared")
    assert dbs.rows("orders") == {3}  # the other branch is finished meanwhile

    # Past the deadline + kill grace the session is KILLed and the branch committed.
    wait_until(lambda: client.get(gtrid).completed, timeout=15, what="completed")
    assert dbs.rows("billing") == {3}
    with pytest.raises(pymysql.err.MySQLError):
        live.session.ping(reconnect=False)
    notes = "\n".join(client.show(gtrid).notes)
    assert "blocked:" in notes and f"KILLed session {live.session_id}" in notes
    assert client.status().recovery_counters["killed"] == 1
    live.session = None
    client.close()


def test_with_kill_live_sessions_off_a_held_branch_stays_blocked(in_process, dbs):
    c = in_process(kill_live_sessions=False)
    gtrid = c.begin(timeout_ms=1000)
    held = [prepare(dbs, "orders", gtrid, 4), prepare(dbs, "billing", gtrid, 4, keep=True)]
    assert c.client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    c.clock.advance(3_600_000)  # far past deadline + kill grace
    for _ in range(3):
        report = c.recovery.run_pass()
    results = {(a.resource, a.action): a.result for a in report.actions}
    assert "kill_live_sessions is off" in results[("billing", "commit")]
    assert report.in_doubt == {gtrid}
    assert not c.client.get(gtrid).completed
    assert held[1].session.open
    held[1].session.ping(reconnect=False)
    assert dbs.rows("orders") == {4} and held[1].xid in dbs.prepared("billing")
    held[1].close()  # the client gives up: the branch detaches, recovery commits it
    c.recovery.run_pass()
    assert c.client.get(gtrid).completed and dbs.rows("billing") == {4}


# -- heuristic outcomes ------------------------------------------------------------------------


def test_a_branch_rolled_back_by_hand_after_commit_is_noted_as_heuristic(in_process, dbs):
    c = in_process()
    gtrid = c.begin()
    held = [prepare(dbs, "orders", gtrid, 5), prepare(dbs, "billing", gtrid, 5)]
    assert c.client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    c.recovery.run_pass()  # within the grace: scans (and sees orders prepared), acts on nothing
    assert held[0].xid in dbs.prepared("orders")

    # An operator rolls the PostgreSQL branch back by hand before recovery finishes it.
    with dbs.pg.admin_connect(dbs.configs["orders"]["database"]) as conn:
        gid = held[0].xid.pg_gid()
        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))

    c.clock.advance(2_000)  # past the grace
    report = c.recovery.run_pass()
    results = {(a.resource, a.action): a.result for a in report.actions}
    assert results[("orders", "verify")].startswith("heuristic: branch orders")
    assert results[("billing", "commit")] == "done"
    assert c.client.get(gtrid).completed  # nothing more can be done: noted, completed
    assert dbs.rows("orders") == set() and dbs.rows("billing") == {5}

    notes = list(c.client.show(gtrid).notes)
    assert len(notes) == 1
    assert notes[0].endswith(
        " heuristic: branch orders on orders was found rolled back although the decision is COMMIT"
    )
    assert c.recovery.counters()["heuristic"] == 1


def test_a_mariadb_branch_the_server_rolled_back_after_commit_is_noted_as_heuristic(
    in_process, dbs
):
    c = in_process()
    gtrid = c.begin()
    # A read-only MariaDB branch whose session closed is rolled back by the server: XA COMMIT
    # then answers XA_RBROLLBACK, i.e. finish_prepared reports the other outcome.
    held = [prepare(dbs, "orders", gtrid, 6), prepare(dbs, "billing", gtrid, None)]
    assert c.client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    c.clock.advance(2_000)
    report = c.recovery.run_pass()
    results = {(a.resource, a.action): a.result for a in report.actions}
    assert results[("billing", "commit")].startswith("heuristic: branch billing")
    assert results[("orders", "commit")] == "done"
    assert any("heuristic" in n for n in c.client.show(gtrid).notes)


# -- never dropped -----------------------------------------------------------------------------


def test_a_branch_on_an_unregistered_resource_stays_blocked_and_in_doubt(in_process, dbs):
    c = in_process()
    gtrid = c.begin()
    held = prepare(dbs, "orders", gtrid, 7)
    ghost = pb.Branch(resource="ghost", bqual="ghost", dialect="mysql", session_id=99)
    assert c.client.commit(gtrid, [held.branch(), ghost]).state == COMMITTED
    c.clock.advance(2_000)
    for _ in range(3):
        report = c.recovery.run_pass()
        results = {(a.resource, a.action): a.result for a in report.actions}
        assert results[("ghost", "commit")] == unknown_resource("ghost")
        assert report.in_doubt == {gtrid}
    assert dbs.rows("orders") == {7}
    assert not c.client.get(gtrid).completed
    status = c.client.status()
    assert status.in_doubt == 1 and status.committed_incomplete == 1
    shown = {b.branch.resource: b.on_database for b in c.client.show(gtrid).branches}
    # Said once, with what to do.
    assert shown["ghost"] == unknown_resource("ghost")
    assert "add [resources.ghost]" in shown["ghost"]
    assert shown["orders"] == "not prepared"


def test_an_unreachable_resource_is_reported_and_retried_with_backoff(in_process, dbs, tmp_path):
    down = dict(dbs.configs["billing"], port=1, connect_timeout=1)
    resources = parse_resources(
        {"orders": dbs.configs["orders"], "billing": down},
        source="test",
        environ={},
        base_dir=tmp_path,
    )
    c = in_process(resources=resources, recovery_interval_ms=1_000)
    gtrid = c.begin()
    held = prepare(dbs, "orders", gtrid, 8)
    branches = [held.branch(), pb.Branch(resource="billing", bqual="billing", dialect="mysql")]
    assert c.client.commit(gtrid, branches).state == COMMITTED
    c.clock.advance(2_000)

    report = c.recovery.run_pass()
    assert len(report.errors) == 1 and report.errors[0].startswith("billing: ")
    results = {(a.resource, a.action): a.result for a in report.actions}
    assert results[("orders", "commit")] == "done"
    assert results[("billing", "commit")].startswith("failed: resource not scanned")
    assert report.in_doubt == {gtrid}
    report = c.recovery.run_pass()  # within the backoff (1 s): not even tried
    assert "not scanned" in report.errors[0] and "after 1 failure(s)" in report.errors[0]
    c.clock.advance(1_000)
    report = c.recovery.run_pass()  # tried again, fails again: the backoff doubles
    assert report.errors[0].startswith("billing: ") and "not scanned" not in report.errors[0]
    c.clock.advance(1_000)
    report = c.recovery.run_pass()
    assert "not scanned" in report.errors[0] and "after 2 failure(s)" in report.errors[0]
    assert c.recovery.run_pass(eager=True).errors[0].startswith("billing: ")  # Admin: now
    states = {r.name: r for r in c.recovery.resource_states()}
    assert states["billing"].reachable is False and states["orders"].reachable
    assert not c.client.get(gtrid).completed
    assert c.recovery.counters()["scan_errors"] == 3


# -- failpoint ---------------------------------------------------------------------------------


def test_failpoint_during_recovery_kills_the_coordinator_and_the_next_start_finishes(
    coordinator_factory, tmp_path, dbs
):
    cluster = new_cluster()
    proc = start_process(coordinator_factory, tmp_path, dbs, cluster)
    client = Client(proc.address)
    gtrid = client.begin(timeout_ms=30_000)
    held = [prepare(dbs, "orders", gtrid, 9), prepare(dbs, "billing", gtrid, 9)]
    proc.restart(failpoints="coordinator.during_recovery")
    assert client.commit(gtrid, [h.branch() for h in held]).state == COMMITTED
    assert proc.wait_exit(10) == -9
    assert "failpoint coordinator.during_recovery hit" in proc.output

    proc.restart(failpoints="")
    wait_until(lambda: client.get(gtrid).completed, what="completed after restart")
    assert dbs.rows("orders") == dbs.rows("billing") == {9}
    client.close()
