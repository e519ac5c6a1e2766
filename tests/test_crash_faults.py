"""The crash suite, one fault at a time: the bank workload (bank.py) killed or cut at an exact step.

Each test puts one transfer at a named step (a client or coordinator failpoint, see
client/tpc/failpoints.py), does its fault there, checks that the fault really left the state it
is about (branches prepared, a decision on disk, one side committed...), lets recovery run
(Admin.Recover passes until nothing of the cluster is prepared) and then checks every bank
invariant: money conserved, each transfer on both sides or neither, nothing prepared, no row
locked, and every transfer there exactly when its gtrid was decided COMMIT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from bank import MARIA, PG, Bank, Transfer

from twostep.client.tpc.failpoints import (
    AFTER_DECISION,
    AFTER_DECISION_FSYNC,
    BEFORE_COMMIT_REQUEST,
    BEFORE_DECISION_FSYNC,
    BEFORE_PREPARE,
    BETWEEN_COMMITS,
    BETWEEN_PREPARES,
    DURING_RECOVERY,
)
from twostep.testing import Admin, CoordinatorProcess

#: Recovery runs when a test asks (Admin.Recover) and at start; the loop itself rarely. No
#: grace: a decided transaction is the coordinator's at once (tests whose client lives on
#: give it the grace, so that the step they are about stays the client's).
RECOVERY = {"recovery_interval_s": 30, "recovery_grace_s": 0, "kill_grace_s": 1}
CLIENT_GRACE = {"recovery_grace_s": 60}
TIMEOUT = 1.5  # seconds per transfer: an orphan's deadline passes soon


@pytest.fixture
def bank(pg, maria, pg_config, maria_config, tmp_path) -> Iterator[Bank]:
    bank = Bank(pg, maria, pg_config, maria_config, tmp_path / "bank")
    yield bank
    bank.close()


@pytest.fixture
def start_coordinator(
    bank: Bank, coordinator_factory: Callable[..., CoordinatorProcess]
) -> Callable[..., CoordinatorProcess]:
    def start(failpoints: str = "", **settings: Any) -> CoordinatorProcess:
        args = bank.coordinator_args(**{**RECOVERY, **settings})
        return coordinator_factory(bank.coordinator_dir, args=args, failpoints=failpoints)

    return start


def recover_and_check(bank: Bank, coordinator: CoordinatorProcess) -> None:
    bank.recover(coordinator)
    assert bank.violations(coordinator) == []


def the_transfer(bank: Bank) -> Transfer:
    """The one transfer of a one-transfer worker."""
    (transfer,) = bank.journal().transfers.values()
    return transfer


def state_of(coordinator: CoordinatorProcess, transfer: Transfer) -> str:
    assert transfer.gtrid is not None
    view = coordinator.get(transfer.gtrid)
    return view.state_name if view else "UNKNOWN"


def killed_at(bank: Bank, coordinator: CoordinatorProcess, failpoint: str) -> Transfer:
    """Run one transfer in a worker that its failpoint kills; that transfer."""
    worker = bank.worker(coordinator, failpoints=failpoint, timeout=TIMEOUT)
    assert worker.wait_exit(30) == -9, worker.output
    assert f"failpoint {failpoint} hit" in worker.output
    transfer = the_transfer(bank)
    assert transfer.outcome is None  # its client never learned how it ended
    return transfer


def prepared_branches(bank: Bank, transfer: Transfer) -> set[str]:
    """The resources that hold a prepared branch of the transfer's gtrid."""
    return {xid.resource for _, xid in bank.prepared_branches() if xid.gtrid == transfer.gtrid}


# -- the client dies ----------------------------------------------------------------------------


def test_client_killed_before_prepare_leaves_nothing_to_recover(bank, start_coordinator):
    coordinator = start_coordinator()
    transfer = killed_at(bank, coordinator, BEFORE_PREPARE)
    # Nothing was prepared: each database rolled its branch back when the session died.
    assert prepared_branches(bank, transfer) == set()
    recover_and_check(bank, coordinator)
    assert state_of(coordinator, transfer) != "COMMITTED"


def test_client_killed_between_prepares_is_aborted_by_recovery(bank, start_coordinator):
    coordinator = start_coordinator()
    transfer = killed_at(bank, coordinator, BETWEEN_PREPARES)
    assert prepared_branches(bank, transfer) == {PG}
    assert any("locked on PostgreSQL" in v for v in bank.violations())  # the orphan's rows
    recover_and_check(bank, coordinator)
    assert state_of(coordinator, transfer) == "ABORTED"  # a durable ABORT before the rollback


def test_client_killed_before_commit_request_is_aborted_by_recovery(bank, start_coordinator):
    coordinator = start_coordinator()
    transfer = killed_at(bank, coordinator, BEFORE_COMMIT_REQUEST)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    recover_and_check(bank, coordinator)
    assert state_of(coordinator, transfer) == "ABORTED"


def test_client_killed_after_the_decision_is_committed_by_recovery(bank, start_coordinator):
    coordinator = start_coordinator()
    transfer = killed_at(bank, coordinator, AFTER_DECISION)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    assert state_of(coordinator, transfer) == "COMMITTED"
    recover_and_check(bank, coordinator)
    assert transfer.id in bank.transfer_ids()


def test_client_killed_between_commits_is_completed_by_recovery(bank, start_coordinator):
    coordinator = start_coordinator()
    transfer = killed_at(bank, coordinator, BETWEEN_COMMITS)
    assert prepared_branches(bank, transfer) == {MARIA}  # PostgreSQL committed already
    assert any("only on PostgreSQL" in v for v in bank.violations())
    recover_and_check(bank, coordinator)
    assert transfer.id in bank.transfer_ids()


def test_client_frozen_after_the_decision_has_its_live_mariadb_session_ended_by_recovery(
    bank, start_coordinator
):
    """A client frozen (not dead) between the decision and phase 2: its MariaDB session stays
    alive and holds the branch ("unknown xid" to everyone else). Past the deadline + kill
    grace, recovery KILLs that session (the client reported its id with Commit) and commits
    both branches. The client, thawed, finds them committed already: harmless, and it reports
    the transfer committed."""
    coordinator = start_coordinator()
    worker = bank.worker(coordinator, failpoints=f"{AFTER_DECISION}=stop", timeout=TIMEOUT)
    worker.wait_stopped(30)
    transfer = the_transfer(bank)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    bank.recover(coordinator)  # while the client is still frozen
    assert transfer.id in bank.transfer_ids()
    worker.resume()
    assert worker.wait_exit(60) == 0, worker.output
    assert the_transfer(bank).outcome == "committed"
    recover_and_check(bank, coordinator)


def test_client_frozen_before_commit_has_its_live_mariadb_session_ended_by_recovery(
    bank, start_coordinator
):
    """Frozen with both branches prepared and no decision: past the deadline, recovery decides
    ABORT and rolls back; the MariaDB branch needs its live session ended first."""
    coordinator = start_coordinator()
    worker = bank.worker(coordinator, failpoints=f"{BEFORE_COMMIT_REQUEST}=stop", timeout=TIMEOUT)
    worker.wait_stopped(30)
    transfer = the_transfer(bank)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    try:
        # MariaDB ends the frozen session (wait_timeout: deadline + 5 s), recovery the branch.
        bank.recover(coordinator, patience_s=10.0)
    finally:
        worker.kill()


# -- the coordinator dies -------------------------------------------------------------------


def test_coordinator_killed_before_the_decision_fsync_decides_again_after_restart(
    bank, start_coordinator
):
    coordinator = start_coordinator(failpoints=BEFORE_DECISION_FSYNC)
    worker = bank.worker(coordinator, timeout=5.0)
    assert coordinator.wait_exit(30) == -9
    transfer = the_transfer(bank)
    # The client waits for an answer with both branches prepared; nothing was decided.
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    coordinator.restart(failpoints="")
    assert worker.wait_exit(30) == 0, worker.output
    transfer = the_transfer(bank)  # its Commit, asked again, got a decision
    assert transfer.outcome in ("committed", "aborted"), transfer
    recover_and_check(bank, coordinator)


def test_coordinator_killed_after_the_decision_fsync_keeps_the_commit(bank, start_coordinator):
    coordinator = start_coordinator(failpoints=AFTER_DECISION_FSYNC)
    worker = bank.worker(coordinator, timeout=5.0)
    assert coordinator.wait_exit(30) == -9
    transfer = the_transfer(bank)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    coordinator.restart(failpoints="")
    assert worker.wait_exit(30) == 0, worker.output
    assert the_transfer(bank).outcome == "committed"
    recover_and_check(bank, coordinator)
    assert transfer.id in bank.transfer_ids()


def test_coordinator_killed_during_recovery_finishes_after_restart(bank, start_coordinator):
    coordinator = start_coordinator()
    committed = killed_at(bank, coordinator, AFTER_DECISION)
    worker = bank.worker(coordinator, failpoints=BEFORE_COMMIT_REQUEST, timeout=TIMEOUT)
    assert worker.wait_exit(30) == -9
    orphan = next(t for t in bank.journal().transfers.values() if t.id != committed.id)
    assert prepared_branches(bank, committed) == prepared_branches(bank, orphan) == {PG, MARIA}

    # Recovery has four branches to finish; the coordinator dies after the first.
    coordinator.kill()
    coordinator.env["TWOSTEP_FAILPOINTS"] = DURING_RECOVERY
    with contextlib.suppress(RuntimeError):  # its pass at start may kill it before the start line
        coordinator.start()
    if coordinator.is_running():
        with contextlib.suppress(grpc.RpcError), Admin(coordinator) as admin:
            admin.recover(timeout=10)
    assert coordinator.wait_exit(30) == -9
    assert f"failpoint {DURING_RECOVERY} hit" in coordinator.output
    left = prepared_branches(bank, committed) | prepared_branches(bank, orphan)
    assert 0 < len(left) < 4, left  # some finished, some not

    coordinator.restart(failpoints="")
    recover_and_check(bank, coordinator)
    assert committed.id in bank.transfer_ids()
    assert state_of(coordinator, orphan) == "ABORTED"


# -- a database dies --------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["postgresql", "mariadb"])
def test_database_killed_with_prepared_branches_commits_them_after_restart(
    bank, start_coordinator, victim
):
    coordinator = start_coordinator(**CLIENT_GRACE)
    worker = bank.worker(coordinator, failpoints=f"{AFTER_DECISION}=stop", timeout=30)
    worker.wait_stopped(30)
    transfer = the_transfer(bank)
    assert prepared_branches(bank, transfer) == {PG, MARIA}
    assert state_of(coordinator, transfer) == "COMMITTED"

    server = bank.pg if victim == "postgresql" else bank.maria
    server.kill()
    server.restart()
    # A prepared branch survives the crash: it is still there, and still holds its rows.
    assert prepared_branches(bank, transfer) == {PG, MARIA}

    worker.resume()  # phase 2: its session is gone, it reconnects and commits
    assert worker.wait_exit(60) == 0, worker.output
    assert the_transfer(bank).outcome == "committed"
    recover_and_check(bank, coordinator)


# -- a connection is cut ----------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["postgresql", "mariadb"])
@pytest.mark.parametrize(
    ("step", "outcome"),
    [(BEFORE_PREPARE, "aborted"), (AFTER_DECISION, "committed")],
    ids=["before-prepare", "after-decision"],
)
def test_connection_cut_mid_transaction(bank, start_coordinator, victim, step, outcome):
    """Cut before prepare: the branch is gone, so everything rolls back. Cut after the
    decision: the prepared branch survives its session, the client reconnects and commits."""
    coordinator = start_coordinator(**CLIENT_GRACE)
    worker = bank.worker(coordinator, failpoints=f"{step}=stop", timeout=30)
    worker.wait_stopped(30)
    proxy = bank.pg_proxy if victim == "postgresql" else bank.maria_proxy
    assert proxy.cut() > 0
    worker.resume()
    assert worker.wait_exit(60) == 0, worker.output
    transfer = the_transfer(bank)
    assert transfer.outcome == outcome, transfer
    recover_and_check(bank, coordinator)
