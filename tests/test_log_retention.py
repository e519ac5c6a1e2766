"""The decision log does not grow forever (issue 6, item 9).

Abandoned active transactions expire (a durable ABORT, completed) once past their deadline +
the recovery grace with nothing of them prepared; finished transactions are pruned after the
retention period, in small batches through the log's writer. In-process coordinators with a
fake clock run the recovery passes where the sequence matters, against the real throwaway
databases (helpers from test_recovery.py); a coordinator process where a restart is the point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from test_recovery import (
    ABORTED,
    COMMITTED,
    Client,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    in_process_fixture,  # noqa: F401 - the fixture "in_process"
    new_cluster,
    prepare,
    start_process,
)

from twostep.coordinator import (
    Ack,
    Begun,
    ConfigError,
    CoordinatorServer,
    Note,
    Proposal,
    Settings,
    SqliteDecisionLog,
    WriterStats,
    load_settings,
)
from twostep.coordinator.recovery import RECOVERY_ABORT_REASON
from twostep.coordinator.recovery.retention import EXPIRED_REASON, PRUNE_BATCH
from twostep.testing import FakeClock
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

ACTIVE = pb.TRANSACTION_STATE_ACTIVE


def actions(report, kind: str) -> list[tuple[str, str]]:
    return [(a.gtrid, a.result) for a in report.actions if a.action == kind]


# -- expiry ------------------------------------------------------------------------------------


def test_an_abandoned_active_transaction_is_aborted_and_completed_past_deadline_and_grace(
    in_process,
):
    c = in_process()  # recovery grace 1 s
    abandoned = c.begin(timeout_ms=10_000)  # its client died before Commit
    one_phase = c.begin(timeout_ms=10_000)  # committed its only branch; the Ack was lost
    later = c.begin(timeout_ms=60_000)
    c.server.decision_log.flush()

    c.clock.advance(10_500)  # past the deadline, within the grace: a Commit could be in flight
    assert actions(c.recovery.run_pass(), "expire") == []
    assert c.client.status().active == 3

    c.clock.advance(600)
    report = c.recovery.run_pass()
    assert sorted(actions(report, "expire")) == sorted([(abandoned, "done"), (one_phase, "done")])
    for gtrid in (abandoned, one_phase):
        t = c.client.get(gtrid)
        assert (t.state, t.reason, t.completed) == (ABORTED, EXPIRED_REASON, True)
    assert c.client.get(later).state == ACTIVE  # before its deadline: untouched
    assert c.client.status().active == 1
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    assert c.client.commit(abandoned, [branch]).state == ABORTED  # the decision stands
    assert c.recovery.counters()["expired"] == 2


def test_an_expired_transaction_with_a_prepared_branch_is_left_to_the_orphan_rule(in_process, dbs):
    c = in_process()
    gtrid = c.begin(timeout_ms=1_000)
    held = prepare(dbs, "billing", gtrid, 7)  # prepared, then its client died
    c.clock.advance(5_000)

    first = c.recovery.run_pass()  # the branch is listed: expiry leaves it alone
    assert actions(first, "expire") == []
    assert c.client.get(gtrid).state == ACTIVE
    c.recovery.run_pass()  # listed twice: an orphan, decided ABORT and rolled back
    t = c.client.get(gtrid)
    assert (t.state, t.reason, t.completed) == (ABORTED, RECOVERY_ABORT_REASON, True)
    assert held.xid not in dbs.prepared("billing")


def test_a_dry_run_plans_expiry_without_deciding(in_process):
    c = in_process()
    gtrid = c.begin(timeout_ms=1_000)
    c.server.decision_log.flush()
    c.clock.advance(5_000)
    assert actions(c.recovery.run_pass(dry_run=True), "expire") == [(gtrid, "planned")]
    assert c.client.get(gtrid).state == ACTIVE


def test_a_begin_reread_after_a_restart_expires_in_a_coordinator_process(
    coordinator_factory, tmp_path, dbs
):
    proc = start_process(coordinator_factory, tmp_path, dbs, new_cluster())
    client = Client(proc.address)
    gtrid = client.begin(timeout_ms=1_000)
    proc.wait_for(gtrid, lambda t: t.state_name == "ACTIVE")  # the Begin is durable
    proc.kill()
    proc.restart()
    t = proc.wait_for(gtrid, lambda t: t.completed, timeout=15)
    assert (t.state_name, t.reason) == ("ABORTED", EXPIRED_REASON)
    client.close()


# -- pruning -----------------------------------------------------------------------------------


def test_finished_transactions_are_pruned_after_the_retention_and_in_doubt_ones_are_kept(
    in_process,
):
    c = in_process(retention_ms=120_000)
    log = c.server.decision_log
    finished = c.begin()
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    assert c.client.commit(finished, [branch]).state == COMMITTED
    c.client.stub.Ack(pb.AckRequest(transactions=[pb.AckItem(gtrid=finished)]))
    log.add_notes([Note(finished, 0, "heuristic", "a note goes with its transaction")])
    in_doubt = c.begin()  # COMMITTED, its branch on a resource nobody can reach: never done
    elsewhere = pb.Branch(resource="elsewhere", bqual="elsewhere", dialect="postgresql")
    assert c.client.commit(in_doubt, [elsewhere]).state == COMMITTED
    log.flush()

    c.clock.advance(119_000)
    c.recovery.run_pass()
    assert c.client.get(finished).completed  # not yet: the retention has not passed

    c.clock.advance(2_000)
    c.recovery.run_pass()
    with pytest.raises(grpc.RpcError) as gone:
        c.client.get(finished)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert log.notes(finished) == []
    assert c.client.get(in_doubt).state == COMMITTED  # in doubt: kept however old
    assert c.recovery.counters()["pruned"] == 1


def test_pruning_deletes_at_most_a_batch_per_write(tmp_path: Path):
    clock = FakeClock()
    log = SqliteDecisionLog(tmp_path, clock=clock)
    rows = 2 * PRUNE_BATCH + 7
    gtrids = [f"ts1.prune.{i:06d}.{'a' * 24}" for i in range(rows)]
    log.record_begun([Begun(g, clock.ms, clock.ms + 1000) for g in gtrids])
    log.decide([Proposal(g, commit=False, reason="test") for g in gtrids])
    log.record_acks([Ack(g) for g in gtrids])
    log.flush()
    clock.advance(10)
    before = log.stats().batches
    assert [log.prune(clock.ms, PRUNE_BATCH) for _ in range(4)] == [PRUNE_BATCH, PRUNE_BATCH, 7, 0]
    assert log.stats().batches == before + 3  # one write each; nothing to do costs no write
    assert sum(log.summary().values()) == 0
    log.close()


# -- 50,000 transactions -------------------------------------------------------------------------


@pytest.fixture
def bare_coordinator(tmp_path: Path) -> Iterator[Callable[..., CoordinatorServer]]:
    """An in-process coordinator without resources or recovery loop, with a fake clock."""
    made: list[CoordinatorServer] = []

    def start(clock: FakeClock, **settings: object) -> CoordinatorServer:
        server = CoordinatorServer(
            Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data", **settings),  # type: ignore[arg-type]
            clock=clock,
            run_recovery=False,
        )
        server.start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop(1)


def test_fifty_thousand_transactions_through_one_coordinator_keep_the_log_bounded(
    bare_coordinator,
):
    clock = FakeClock()
    server = bare_coordinator(
        clock, max_timeout_ms=60_000, retention_ms=120_000, recovery_grace_ms=1_000
    )
    log = server.decision_log
    assert isinstance(log, SqliteDecisionLog)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.CoordinatorStub(channel)
    branches = [
        pb.Branch(resource="orders", bqual="orders", dialect="postgresql"),
        pb.Branch(resource="billing", bqual="billing", dialect="mysql", session_id=42),
    ]

    def files() -> int:
        return sum(p.stat().st_size for p in log.path.parent.glob(f"{log.path.name}*"))

    rows, sizes = [], []
    for _ in range(50):  # 1,000 transactions a round, 20 s of the clock apart
        begun = stub.Begin(pb.BeginRequest(timeout_ms=10_000, count=1000), timeout=30)
        gtrids = [t.gtrid for t in begun.transactions]
        committed = gtrids[:900]  # the other 100: clients that died before Commit
        items = [pb.CommitItem(gtrid=g, branches=branches) for g in committed]
        reply = stub.Commit(pb.CommitRequest(transactions=items), timeout=30)
        assert {d.state for d in reply.decisions} == {COMMITTED}
        acks = [pb.AckItem(gtrid=g) for g in committed]
        stub.Ack(pb.AckRequest(transactions=acks), timeout=30)
        log.flush()
        clock.advance(20_000)
        server.recovery.run_pass()
        log.flush()
        rows.append(sum(log.summary().values()))
        sizes.append(files())
    channel.close()

    counters = server.recovery.counters()
    assert counters["expired"] == 5_000
    assert counters["pruned"] >= 50_000 - 7_000
    # Kept: what finished within the retention (120 s: 6 rounds) and the round just run.
    assert max(rows) <= 7_000, rows
    # Freed pages are reused and the WAL is checkpointed: no growth once rows are pruned.
    assert max(sizes[10:]) <= sizes[10] * 1.1, sizes
    assert sizes[-1] < 16 * 1024 * 1024, sizes


# -- settings ----------------------------------------------------------------------------------


def test_the_retention_must_outlast_the_max_timeout_and_the_clients_patience():
    assert load_settings([], {}).retention_ms == 6 * 3600 * 1000
    assert load_settings(["--retention", "360"], {}).retention_ms == 360_000
    with pytest.raises(ConfigError, match=r"retention \(359 s\) is shorter than the max timeout"):
        load_settings(["--retention", "359"], {})  # max timeout 300 s + 60 s
    with pytest.raises(ConfigError, match="environment TWOSTEP_RETENTION"):
        load_settings([], {"TWOSTEP_RETENTION": "forever"})
    assert (
        load_settings(
            ["--max-timeout", "10", "--default-timeout", "5", "--retention", "70"], {}
        ).retention_ms
        == 70_000
    )


def test_only_writes_that_recovery_would_redo_commit_without_an_fsync(tmp_path: Path):
    # Begins and Acks alone: lost to a power cut they are redone (presumed abort decides an
    # unknown gtrid, recovery finishes an unacknowledged decision); decisions and notes are
    # synced, and an fsync also makes the unsynced frames before it durable (one WAL).
    clock = FakeClock()
    log = SqliteDecisionLog(tmp_path, clock=clock)
    gtrids = [f"ts1.sync.{i:06d}.{'a' * 24}" for i in range(3)]
    deadline = time.monotonic() + 10

    def written(items: int, since: WriterStats) -> WriterStats:
        """The stats once `items` more rows than `since` are written (nobody waits for them)."""
        while (now := log.stats()).items - since.items < items:
            assert time.monotonic() < deadline, "the writes were not made"
            time.sleep(0.01)
        return now

    start = log.stats()
    log.record_begun([Begun(g, clock.ms, clock.ms + 1000) for g in gtrids])
    begun = written(3, start)
    assert begun.batches > start.batches and begun.fsyncs == start.fsyncs
    log.decide([Proposal(g, commit=True, reason="test") for g in gtrids])
    decided = log.stats()
    assert (decided.batches - begun.batches, decided.fsyncs - begun.fsyncs) == (1, 1)
    log.record_acks([Ack(g) for g in gtrids])
    log.record_acks([Ack(g) for g in gtrids])
    acked = written(6, decided)
    assert acked.batches > decided.batches and acked.fsyncs == decided.fsyncs
    log.add_notes([Note(gtrids[0], clock.ms, "heuristic", "a note")])
    written(1, acked)
    assert log.stats().fsyncs == acked.fsyncs + 1
    assert all(log.get(g).completed for g in gtrids)  # type: ignore[union-attr]
    log.close()
