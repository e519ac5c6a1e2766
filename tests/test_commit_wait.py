"""Once Commit may have left the client, only a decision ends its wait (issue: no torn write).

A scripted proxy (tests/scripted_coordinator.py) sits between a real client and a real
in-process coordinator on real PostgreSQL and MariaDB; it loses replies, refuses retries the
way auth proxies and balancers do, and answers with replies that are not decisions. The rule:
after the first attempt nothing but COMMITTED / ABORTED for this gtrid ends the wait; the
client then closes its branch sessions and raises OutcomeUnknown, and the coordinator's
recovery finishes the branches by the logged decision. Only a refusal of the very first
attempt (known not to have been acted on) rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from scripted_coordinator import Answer, DecideThen, Forward, Refuse, ScriptedCoordinator
from test_recovery import COMMITTED, Databases, dbs_fixture, in_process_fixture, shop_fixture  # noqa: F401

import twostep.client._global as global_module
from twostep.client import (
    OutcomeUnknown,
    TransactionAborted,
    get_connection,
    global_transaction,
)
from twostep.client.tpc import Xid
from twostep.v1 import coordinator_pb2 as pb

Code = grpc.StatusCode


@pytest.fixture(autouse=True)
def short_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long past the deadline the client keeps asking for a lost decision (s)."""
    monkeypatch.setattr(global_module, "_OUTCOME_PATIENCE", 0.5)


@pytest.fixture
def coordinator(in_process):
    return in_process(recovery_grace_ms=0)


@pytest.fixture
def proxies() -> Iterator[list[ScriptedCoordinator]]:
    made: list[ScriptedCoordinator] = []
    yield made
    for proxy in made:
        proxy.close()


def scripted(proxies, coordinator, *steps) -> ScriptedCoordinator:
    proxy = ScriptedCoordinator(coordinator.server.address, steps)
    proxies.append(proxy)
    return proxy


def write_both(row: int) -> None:
    get_connection("orders").execute("INSERT INTO t (id) VALUES (?)", (row,))
    get_connection("billing").execute("INSERT INTO t (id) VALUES (?)", (row,))


def decision(state: int, gtrid: str) -> pb.CommitResponse:
    return pb.CommitResponse(decisions=[pb.Decision(gtrid=gtrid, state=state)])


NOT_A_DECISION = {
    "active": lambda g: decision(pb.TRANSACTION_STATE_ACTIVE, g),
    "unspecified": lambda g: decision(pb.TRANSACTION_STATE_UNSPECIFIED, g),
    "unknown-state-number": lambda g: decision(7, g),
    "no-decisions": lambda g: pb.CommitResponse(),
    "another-gtrid": lambda g: decision(pb.TRANSACTION_STATE_ABORTED, g[:-4] + "aaaa"),
    "two-decisions": lambda g: pb.CommitResponse(
        decisions=[
            pb.Decision(gtrid=g, state=pb.TRANSACTION_STATE_ABORTED),
            pb.Decision(gtrid=g, state=pb.TRANSACTION_STATE_COMMITTED),
        ]
    ),
}
REFUSALS = [
    Code.UNAUTHENTICATED,
    Code.PERMISSION_DENIED,
    Code.UNIMPLEMENTED,
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.NOT_FOUND,
    Code.OUT_OF_RANGE,
]
RETRIES = [Refuse(code) for code in REFUSALS] + [Answer(f) for f in NOT_A_DECISION.values()]
RETRY_IDS = [f"refused-{c.name}" for c in REFUSALS] + list(NOT_A_DECISION)


def assert_left_to_the_coordinator(shop: Databases, coordinator, gtrid: str) -> None:
    """Nothing was rolled back: both branches wait prepared, detached from the client; one
    recovery pass commits both by the logged decision."""
    assert Xid.of(gtrid, "orders") in shop.prepared("orders")
    assert [x.resource for x in shop.prepared("billing") if x.gtrid == gtrid] == ["billing"]
    report = coordinator.recovery.run_pass(eager=True)
    assert not report.in_doubt, report.actions  # the MariaDB session was closed: detached
    assert shop.rows("orders") == shop.rows("billing") == {1}
    assert not [n for n in coordinator.server.decision_log.notes(gtrid) if n.kind == "heuristic"]


@pytest.mark.parametrize("retry", RETRIES, ids=RETRY_IDS)
def test_after_a_lost_committed_reply_no_answer_but_a_decision_ends_the_wait(
    shop, coordinator, proxies, retry
):
    proxy = scripted(proxies, coordinator, DecideThen(Code.UNAVAILABLE), retry)
    with pytest.raises(OutcomeUnknown) as info:
        with global_transaction(coordinator=proxy.address, timeout=2):
            write_both(1)
    gtrid = info.value.gtrid
    assert proxy.commit_calls >= 2
    assert "rolled back" not in str(info.value)
    assert coordinator.client.get(gtrid).state == COMMITTED
    assert_left_to_the_coordinator(shop, coordinator, gtrid)


@pytest.mark.parametrize("reply", list(NOT_A_DECISION.values()), ids=list(NOT_A_DECISION))
def test_a_first_reply_that_is_not_a_decision_is_not_an_answer(shop, coordinator, proxies, reply):
    proxy = scripted(proxies, coordinator, Answer(reply))
    with pytest.raises(OutcomeUnknown) as info:
        with global_transaction(coordinator=proxy.address, timeout=2):
            write_both(1)
    assert_left_to_the_coordinator(shop, coordinator, info.value.gtrid)


@pytest.mark.parametrize("code", REFUSALS[:5], ids=[c.name for c in REFUSALS[:5]])
def test_a_refused_first_commit_rolls_every_branch_back(shop, coordinator, proxies, code):
    proxy = scripted(proxies, coordinator, Refuse(code))
    with pytest.raises(TransactionAborted, match="every branch was rolled back") as info:
        with global_transaction(coordinator=proxy.address, timeout=5):
            write_both(1)
    gtrid = info.value.gtrid
    assert proxy.commit_calls == 1
    assert not [x for x in shop.prepared("orders") | shop.prepared("billing") if x.gtrid == gtrid]
    assert shop.rows("orders") == shop.rows("billing") == set()
    assert coordinator.client.get(gtrid).state != COMMITTED


@pytest.mark.parametrize(
    "between",
    [
        Refuse(Code.UNAUTHENTICATED),
        DecideThen(Code.DEADLINE_EXCEEDED),
        Answer(NOT_A_DECISION["active"]),
    ],
    ids=["refused", "timed-out", "not-a-decision"],
)
def test_a_decision_after_lost_replies_commits_normally(shop, coordinator, proxies, between):
    proxy = scripted(proxies, coordinator, DecideThen(Code.UNAVAILABLE), between, Forward())
    with global_transaction(coordinator=proxy.address, timeout=5) as gtx:
        write_both(1)
    assert proxy.commit_calls == 3
    assert shop.rows("orders") == shop.rows("billing") == {1}
    assert not shop.prepared("orders") and not shop.prepared("billing")
    assert coordinator.client.get(gtx.gtrid).state == COMMITTED
