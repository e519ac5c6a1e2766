"""Commits of concurrent transactions share calls (client/_commit_batch.py).

The batching is plain concurrency around one `send(items, timeout)`; these tests drive it
with a `send` they control (no network: what crosses the wire is tested against a real
coordinator in test_global_transaction and the crash suite), to pin down the rules: a call
goes out at once when none is in flight; what arrives meanwhile leaves together next; each
caller gets its own gtrid's decisions, or its call's error; nobody waits forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import grpc
import pytest

from twostep.client._commit_batch import CommitBatch
from twostep.v1 import coordinator_pb2 as pb

COMMITTED = pb.TRANSACTION_STATE_COMMITTED


def item(gtrid: str) -> pb.CommitItem:
    return pb.CommitItem(gtrid=gtrid)


def answer(items: Sequence[pb.CommitItem]) -> pb.CommitResponse:
    return pb.CommitResponse(decisions=[pb.Decision(gtrid=i.gtrid, state=COMMITTED) for i in items])


class Gate:
    """A `send` whose first call waits until the test opens the gate."""

    def __init__(self, then: Callable[[Sequence[pb.CommitItem]], pb.CommitResponse] = answer):
        self.calls: list[list[str]] = []
        self.first_in = threading.Event()
        self.open = threading.Event()
        self._then = then

    def __call__(self, items: Sequence[pb.CommitItem], timeout: float) -> pb.CommitResponse:
        self.calls.append([i.gtrid for i in items])
        if len(self.calls) == 1:
            self.first_in.set()
            assert self.open.wait(10)
        return self._then(items)


def commit_in_threads(batch: CommitBatch, gtrids: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}

    def run(gtrid: str) -> None:
        try:
            results[gtrid] = batch.commit(item(gtrid), 5)
        except BaseException as exc:
            results[gtrid] = exc

    threads = [threading.Thread(target=run, args=(g,)) for g in gtrids]
    results["_threads"] = threads
    for thread in threads:
        thread.start()
    return results


def wait_queued(batch: CommitBatch, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(batch._queue) < n:  # the module's own state: what waits for the next call
        assert time.monotonic() < deadline, "callers never queued"
        time.sleep(0.005)


def join(started: dict[str, object]) -> dict[str, object]:
    for thread in started.pop("_threads"):  # type: ignore[union-attr]
        thread.join(10)
        assert not thread.is_alive(), "a caller still waits"
    return started


def test_a_lone_commit_leaves_at_once_in_a_call_of_its_own():
    gate = Gate()
    gate.open.set()
    decisions = CommitBatch(gate).commit(item("g0"), 5)
    assert gate.calls == [["g0"]]
    assert [d.gtrid for d in decisions] == ["g0"]


def test_commits_arriving_while_one_is_in_flight_leave_together_in_the_next_call():
    gate = Gate()
    batch = CommitBatch(gate)
    first = commit_in_threads(batch, ["g0"])
    assert gate.first_in.wait(10)
    rest = commit_in_threads(batch, [f"g{i}" for i in range(1, 16)])
    wait_queued(batch, 15)
    gate.open.set()
    results = join(first) | join(rest)
    assert sorted(results) == sorted(f"g{i}" for i in range(16))
    assert gate.calls[0] == ["g0"]
    assert sorted(gate.calls[1]) == sorted(f"g{i}" for i in range(1, 16))
    assert len(gate.calls) == 2
    for gtrid, decisions in results.items():
        assert [d.gtrid for d in decisions] == [gtrid]  # each gets its own


def test_a_failed_call_fails_every_caller_in_it_and_the_next_call_still_goes():
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

    def refuse(items: Sequence[pb.CommitItem]) -> pb.CommitResponse:
        raise Refused()

    gate = Gate(then=refuse)
    batch = CommitBatch(gate)
    first = commit_in_threads(batch, ["g0"])
    assert gate.first_in.wait(10)
    rest = commit_in_threads(batch, ["g1", "g2"])
    wait_queued(batch, 2)
    gate.open.set()
    results = join(first) | join(rest)
    assert all(isinstance(r, Refused) for r in results.values())
    assert len(gate.calls) == 2  # the second batch was sent by one of its own callers
    gate.calls.clear()
    with pytest.raises(Refused):
        batch.commit(item("g3"), 5)  # nothing is left in flight
    assert gate.calls == [["g3"]]


def test_an_interrupted_leader_leaves_no_follower_waiting():
    calls = []

    def second_interrupted(items: Sequence[pb.CommitItem]) -> pb.CommitResponse:
        calls.append(len(calls))
        if len(calls) == 2:  # the call carrying g1 and g2, sent by one of them
            raise KeyboardInterrupt
        return answer(items)

    gate = Gate(then=second_interrupted)
    batch = CommitBatch(gate)
    first = commit_in_threads(batch, ["g0"])
    assert gate.first_in.wait(10)
    rest = commit_in_threads(batch, ["g1", "g2"])
    wait_queued(batch, 2)
    gate.open.set()
    results = join(first) | join(rest)
    assert [d.gtrid for d in results["g0"]] == ["g0"]
    outcomes = sorted(type(results[g]).__name__ for g in ("g1", "g2"))
    # The leader gets its KeyboardInterrupt as it was; its follower, a lost reply: ask again.
    assert outcomes == ["KeyboardInterrupt", "_Interrupted"]
    follower = next(results[g] for g in ("g1", "g2") if isinstance(results[g], grpc.RpcError))
    assert follower.code() == grpc.StatusCode.UNKNOWN
