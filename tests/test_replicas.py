"""Several coordinator replicas (real processes) on one PostgreSQL decision log.

- One decision per gtrid across replicas: clients race Commits on both replicas against both
  replicas' expiry-Aborts (recovery) on the same gtrids; every client sees the same outcome.
- The cluster claim is shared by the replicas of one log store, and still refuses a
  coordinator of the same cluster id with another store.
- SIGKILL one replica mid-load: the other finishes the transactions it decided (the bank
  invariants of the crash suite, tests/bank.py).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from bank import Bank

from twostep.client import Connection
from twostep.client.tpc import Xid, require_two_phase
from twostep.client.tpc.failpoints import AFTER_DECISION
from twostep.coordinator import PostgresDecisionLog
from twostep.coordinator.recovery.retention import EXPIRED_REASON
from twostep.testing import CoordinatorProcess, PostgresServer
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

RPC_TIMEOUT = 10.0
COMMITTED, ABORTED = pb.TRANSACTION_STATE_COMMITTED, pb.TRANSACTION_STATE_ABORTED


@pytest.fixture
def log_url(pg_server: PostgresServer) -> Iterator[str]:
    """A libpq URL of a new, empty database for the shared decision log, dropped afterwards."""
    name = f"log_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"
    finally:
        pg_server.drop_database(name)


def shared_log(log_url: str, cluster: str, **settings: Any) -> dict[str, Any]:
    return {
        "log_store": "postgresql",
        "log_database_url": log_url,
        "cluster_id": cluster,
        **settings,
    }


def stub(proc: CoordinatorProcess) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(grpc.insecure_channel(proc.address))


# -- one decision per gtrid ------------------------------------------------------------------


def test_commits_on_two_replicas_racing_their_expiry_aborts_get_one_outcome_per_gtrid(
    coordinator_factory: Callable[..., CoordinatorProcess], log_url: str
):
    # Recovery every 0.1 s with no grace: each replica expires an undecided transaction the
    # moment its deadline passes, while clients send Commits to both around that moment.
    settings = shared_log(log_url, "race", recovery_interval_s=0.1, recovery_grace_s=0)
    replicas = [coordinator_factory(settings=settings) for _ in range(2)]
    stubs = [stub(r) for r in replicas]
    begun = stubs[0].Begin(pb.BeginRequest(timeout_ms=1_500, count=60), timeout=RPC_TIMEOUT)
    gtrids = [t.gtrid for t in begun.transactions]
    deadline_s = max(t.deadline_unix_ms for t in begun.transactions) / 1000
    rng = random.Random(9)
    # Per gtrid, 6 Commits at random moments from 0.4 s before its deadline to 0.4 s after,
    # each to a random replica; a third of the gtrids get theirs only 1-1.4 s after it (time
    # for a pass to expire them first, also when a loaded machine slows the passes down).
    calls = []
    for i, gtrid in enumerate(gtrids):
        earliest, latest = (1.0, 1.4) if i % 3 == 0 else (-0.4, 0.4)
        calls += [
            (gtrid, deadline_s + rng.uniform(earliest, latest), rng.choice(stubs)) for _ in range(6)
        ]
    calls.sort(key=lambda call: call[1])

    def commit(call: tuple[str, float, pb_grpc.CoordinatorStub]) -> tuple[str, int, str]:
        gtrid, at, replica = call
        time.sleep(max(0.0, at - time.time()))
        item = pb.CommitItem(
            gtrid=gtrid,
            branches=[
                pb.Branch(resource="orders", bqual="orders", dialect="postgresql"),
                pb.Branch(resource="billing", bqual="billing", dialect="mysql", session_id=1),
            ],
        )
        reply = replica.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
        return gtrid, reply.decisions[0].state, reply.decisions[0].reason

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(commit, calls))

    reasons: set[str] = set()
    for gtrid in gtrids:
        seen = {(state, reason) for g, state, reason in answers if g == gtrid}
        assert len(seen) == 1, (gtrid, seen)
        ((state, reason),) = seen
        assert state in (COMMITTED, ABORTED)
        for replica in stubs:  # both replicas read the one decision
            row = replica.GetTransaction(pb.GetTransactionRequest(gtrid=gtrid), timeout=RPC_TIMEOUT)
            assert (row.state, row.reason) == (state, reason)
        reasons.add(reason if state == ABORTED else "committed")
    assert "committed" in reasons and EXPIRED_REASON in reasons, reasons  # both sides won


# -- recovery work split ------------------------------------------------------------------------


def test_recovery_leaves_a_transaction_alone_while_another_replica_works_on_it(
    coordinator_factory: Callable[..., CoordinatorProcess],
    log_url: str,
    pg_config: dict[str, Any],
    pg_server: PostgresServer,
):
    settings = shared_log(log_url, "split", recovery_grace_s=0, recovery_interval_s=3600)
    replica = coordinator_factory(settings=settings, resources={"orders": pg_config})
    coordinator = stub(replica)
    (started,) = coordinator.Begin(pb.BeginRequest(count=1), timeout=RPC_TIMEOUT).transactions
    gtrid = started.gtrid
    with pg_server.admin_connect(pg_config["database"]) as admin:
        admin.execute("CREATE TABLE t (id int)")
    connection = Connection.from_config("orders", pg_config)
    ops = require_two_phase("postgresql", connection="orders")
    session = connection.connect()
    xid = Xid.of(gtrid, "orders")
    ops.begin(session, xid, None)
    connection.dialect.run(session, "INSERT INTO t (id) VALUES (1)")
    ops.prepare(session, xid)
    connection.dialect.close(session)  # ... and its client died before phase 2
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    item = pb.CommitItem(gtrid=gtrid, branches=[branch])
    reply = coordinator.Commit(pb.CommitRequest(transactions=[item]), timeout=RPC_TIMEOUT)
    assert reply.decisions[0].state == COMMITTED

    def prepared() -> bool:
        with pg_server.admin_connect(pg_config["database"]) as admin:
            return bool(admin.execute("SELECT 1 FROM pg_prepared_xacts").fetchall())

    other = PostgresDecisionLog(log_url, cluster_id="split")  # another replica's log
    try:
        with other.take_work([gtrid]) as held:
            assert held == {gtrid}
            replica.recover()
            assert prepared()  # the other replica is working on it: left alone
        replica.recover()
        assert not prepared()
        assert replica.get(gtrid).completed  # type: ignore[union-attr]
    finally:
        other.close()


# -- the cluster claim --------------------------------------------------------------------------


def test_replicas_of_one_log_store_share_the_cluster_claim_and_another_store_is_refused(
    coordinator_factory: Callable[..., CoordinatorProcess], log_url: str, pg_config: dict[str, Any]
):
    resources = {"orders": pg_config}
    settings = shared_log(log_url, "claimed")
    first = coordinator_factory(settings=settings, resources=resources)
    second = coordinator_factory(settings=settings, resources=resources)
    for replica in (first, second):
        report = replica.recover()
        assert list(report.errors) == []  # each one scans the resource: the claim is theirs
    embedded = coordinator_factory(
        settings={"cluster_id": "claimed"}, resources=resources, start=False
    )
    with pytest.raises(RuntimeError, match="cluster id 'claimed' is claimed on resource orders"):
        embedded.start()
    first.kill()  # the survivor keeps the claim, or takes it over
    assert list(second.recover().errors) == []


# -- SIGKILL one replica mid-load --------------------------------------------------------------


@pytest.fixture
def bank(pg, maria, pg_config, maria_config, tmp_path) -> Iterator[Bank]:
    bank = Bank(pg, maria, pg_config, maria_config, tmp_path / "bank")
    yield bank
    bank.close()


def test_a_replica_killed_mid_load_leaves_its_decided_transactions_to_the_other(
    bank: Bank, coordinator_factory: Callable[..., CoordinatorProcess], log_url: str
):
    def replica(name: str, **settings: Any) -> CoordinatorProcess:
        config = bank.directory / f"{name}.toml"
        config.write_text(bank.coordinator_toml(**shared_log(log_url, bank.cluster_id, **settings)))
        return coordinator_factory(bank.directory / name, args=["--config", str(config)])

    # The victim never finishes a decided transaction itself (its grace outlasts the test):
    # whatever it decided and its client did not finish is left to the survivor.
    victim = replica("victim", recovery_interval_s=0.5, recovery_grace_s=600)
    survivor = replica("survivor", recovery_interval_s=0.5, recovery_grace_s=0.5, kill_grace_s=1)
    load = bank.worker(victim, transfers=40, threads=4, timeout=5.0)
    orphaned = bank.worker(victim, failpoints=AFTER_DECISION, timeout=5.0)  # decided, then dies
    assert orphaned.wait_exit(20) == -9
    deadline = time.monotonic() + 30
    while len(bank.journal().with_outcome("committed")) < 20:
        assert time.monotonic() < deadline and load.is_running(), bank.journal().counts()
        time.sleep(0.05)
    victim.kill()
    load.kill()  # its transfers in flight are left in every state: prepared, decided, finished

    bank.recover(survivor)
    assert bank.violations(survivor) == []
    # The orphaned client's transfer: the victim decided COMMIT, the survivor committed it.
    (orphan,) = [t for t in bank.journal().transfers.values() if t.id.startswith("w1-")]
    view = survivor.get(orphan.gtrid)  # type: ignore[arg-type]
    assert view is not None and view.state_name == "COMMITTED"
    assert orphan.id in bank.transfer_ids()
