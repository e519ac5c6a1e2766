"""A registered resource that hangs holds up nothing else (issue 11, point 3).

Two ways a database hangs, against a real coordinator process and the real databases:
- it never greets: a TCP listener that accepts and never sends a byte (`SilentServer`), where
  MySQL's greeting or PostgreSQL's answer to the startup message should come;
- it stalls after connecting: a real database behind a `TcpProxy` that forwarded the handshake
  and the first statements, then passes nothing on (`stall()`).

The hung resource's own timeouts are set far longer than the tests wait (`_HANG_S`): what
they prove is that nobody waits for it, not that its calls time out at last.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from tcp_proxy import TcpProxy
from test_recovery import (
    Client,
    Databases,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    new_cluster,
    prepare,
    start_process,
    wait_until,
)

from twostep.client import Connection, DatabaseError
from twostep.v1 import admin_pb2 as apb
from twostep.v1 import coordinator_pb2 as pb

_HANG_S = 120  # the hung resource's connect and database timeouts: longer than any test here


class SilentServer:
    """Accepts TCP connections and never sends anything (nor closes them) until `close()`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="silent-server").start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._held:
            sock.close()


@pytest.fixture(name="silent")
def silent_fixture() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _hung_config(driver: str, port: int) -> dict[str, Any]:
    return {
        "driver": driver,
        "host": "127.0.0.1",
        "port": port,
        "database": "nowhere",
        "username": "nobody",
        "connect_timeout": _HANG_S,
    }


@pytest.fixture(name="stalled")
def stalled_fixture(dbs: Databases) -> Iterator[tuple[dict[str, Any], TcpProxy]]:
    """A MariaDB database of its own ('ledger'), reached through a proxy the test stalls."""
    name = "ledger_" + secrets.token_hex(4)
    dbs.maria.create_database(name)
    proxy = TcpProxy(dbs.maria.port)
    config = {**dbs.maria.config(name), "port": proxy.port, "connect_timeout": _HANG_S}
    yield config, proxy
    proxy.close()
    dbs.maria.drop_database(name)


def _coordinator(
    coordinator_factory: Callable[..., Any],
    tmp_path: Any,
    dbs: Databases,
    hung: dict[str, Any],
    **settings: Any,
) -> tuple[Any, Client]:
    """A coordinator process with 'orders', 'billing' and the resource 'hung'."""
    dbs.configs["hung"] = hung
    values = {"database_timeout_s": _HANG_S, "recovery_interval_s": 0.2} | settings
    proc = start_process(coordinator_factory, tmp_path, dbs, new_cluster(), **values)
    del dbs.configs["hung"]
    return proc, Client(proc.address)


def _committed_and_abandoned(dbs: Databases, client: Client, row: int) -> list[Any]:
    """A transaction prepared on 'orders' and 'billing', decided COMMIT, whose client died
    before phase 2: recovery has to commit both branches."""
    gtrid = client.begin(timeout_ms=60_000)
    held = [prepare(dbs, "orders", gtrid, row), prepare(dbs, "billing", gtrid, row)]
    decision = client.commit(gtrid, [h.branch() for h in held])
    assert decision.state == pb.TRANSACTION_STATE_COMMITTED
    return held


def _status_of(client: Client, name: str) -> apb.ResourceStatus:
    return next(r for r in client.status().resources if r.name == name)


def _hangs(kind: str, silent: SilentServer, stalled: Any) -> dict[str, Any]:
    if kind == "mysql-no-greeting":
        return _hung_config("mysql", silent.port)
    if kind == "postgresql-no-answer":
        return _hung_config("postgresql", silent.port)
    config, _ = stalled
    return config


@pytest.mark.parametrize(
    "kind", ["mysql-no-greeting", "postgresql-no-answer", "mysql-stalled-after-connecting"]
)
def test_a_healthy_resources_committed_branches_are_finished_while_another_resource_hangs(
    coordinator_factory, tmp_path, dbs, silent, stalled, kind
):
    _, client = _coordinator(coordinator_factory, tmp_path, dbs, _hangs(kind, silent, stalled))
    if kind.endswith("after-connecting"):
        wait_until(lambda: _status_of(client, "hung").reachable, what="a first scan of 'hung'")
        stalled[1].stall()
    held = _committed_and_abandoned(dbs, client, row=1)

    # Far sooner than the hung resource's timeouts: nobody waited for it.
    for h in held:
        name = h.connection.name
        wait_until(lambda n=name, x=h.xid: x not in dbs.prepared(n), timeout=20, what=name)
    assert dbs.rows("orders") == dbs.rows("billing") == {1}
    client.close()


@pytest.mark.parametrize("kind", ["mysql-no-greeting", "mysql-stalled-after-connecting"])
def test_status_reports_a_hung_resource_as_stuck_not_as_reachable(
    coordinator_factory, tmp_path, dbs, silent, stalled, kind
):
    _, client = _coordinator(coordinator_factory, tmp_path, dbs, _hangs(kind, silent, stalled))
    if kind.endswith("after-connecting"):
        wait_until(lambda: _status_of(client, "hung").reachable, what="a first scan of 'hung'")
        stalled[1].stall()

    hung = wait_until(
        lambda: (s := _status_of(client, "hung")).error.startswith("stuck") and s,
        timeout=20,
        what="'hung' reported stuck",
    )
    assert not hung.reachable
    # The healthy ones are reachable (waited for: a scan slowed past its 1 s patience by a
    # loaded machine is reported unreachable until the next pass).
    wait_until(
        lambda: _status_of(client, "orders").reachable and _status_of(client, "billing").reachable,
        what="the healthy resources reachable",
    )
    client.close()


def test_show_transaction_with_a_short_deadline_frees_its_worker_while_a_resource_hangs(
    coordinator_factory, tmp_path, dbs, silent
):
    hung = _hung_config("mysql", silent.port)
    _, client = _coordinator(coordinator_factory, tmp_path, dbs, hung, workers=8)
    gtrid = client.begin(timeout_ms=60_000)
    shows = apb.ShowTransactionRequest(gtrid=gtrid)

    def show() -> grpc.StatusCode:
        try:
            client.admin.ShowTransaction(shows, metadata=client.auth, timeout=1.0)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    # More calls than workers, each with a 1 s deadline: the old answer kept every worker
    # waiting for the hung resource for good, and Begin failed from then on.
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: show(), range(10)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    for row in (1, 2):
        # Each worker is free again: Begin and Commit are served, one after another.
        other = client.begin(timeout_ms=60_000)
        branch = prepare(dbs, "orders", other, row).branch()
        assert client.commit(other, [branch]).state == pb.TRANSACTION_STATE_COMMITTED
    # Answered shortly before its deadline, the branch on the hung resource shown as stuck.
    detail = client.admin.ShowTransaction(shows, metadata=client.auth, timeout=5)
    assert detail.transaction.gtrid == gtrid
    client.close()


def test_show_transaction_shows_the_branch_on_a_hung_resource_as_stuck(
    coordinator_factory, tmp_path, dbs, stalled
):
    config, proxy = stalled
    _, client = _coordinator(coordinator_factory, tmp_path, dbs, config)
    wait_until(lambda: _status_of(client, "hung").reachable, what="a first scan of 'hung'")
    gtrid = client.begin(timeout_ms=60_000)
    held = prepare(dbs, "orders", gtrid, 5)
    on_hung = pb.Branch(resource="hung", bqual="hung", dialect="mysql")
    assert client.commit(gtrid, [held.branch(), on_hung]).state == pb.TRANSACTION_STATE_COMMITTED
    proxy.stall()

    request = apb.ShowTransactionRequest(gtrid=gtrid)
    detail = client.admin.ShowTransaction(request, metadata=client.auth, timeout=3.0)
    shown = {b.branch.resource: b.on_database for b in detail.branches}
    assert shown["hung"].startswith("stuck"), shown
    client.close()


def test_sigterm_stops_the_coordinator_within_its_bound_while_a_resource_hangs(
    coordinator_factory, tmp_path, dbs, stalled
):
    config, proxy = stalled
    proc, client = _coordinator(
        coordinator_factory, tmp_path, dbs, config, shutdown_grace_s=1, recovery_interval_s=1
    )
    wait_until(lambda: _status_of(client, "hung").reachable, what="a first scan of 'hung'")
    proxy.stall()
    # A call waiting for the hung resource when the signal comes (a scan, an Admin call).
    wait_until(lambda: _status_of(client, "hung").error.startswith("stuck"), timeout=20)
    with contextlib.suppress(grpc.RpcError):
        request = apb.ScanResourceRequest(resource="hung")
        client.admin.ScanResource(request, metadata=client.auth, timeout=0.5)
    client.close()

    proc.terminate()
    # Grace 1 s + at most 5 s forced: far sooner than the hung calls' own timeouts.
    assert proc.wait_exit(timeout=15) in (0, 1)
    assert "coordinator stopped" in proc.output or "exiting now" in proc.output


def test_an_applications_mysql_session_gives_up_on_a_server_that_never_greets(silent):
    connection = Connection.from_config(
        "silent", {**_hung_config("mysql", silent.port), "connect_timeout": 1}
    )
    pool = ThreadPoolExecutor(1)  # the old answer waited for the greeting forever
    attempt = pool.submit(connection.connect)
    pool.shutdown(wait=False)
    with pytest.raises(DatabaseError, match=r"timed out"):
        attempt.result(timeout=30)
