"""The client's Acks and Aborts (client/_coordinator_outbox.py): Acks linger to share a call,
an Abort goes at once, and what is left is sent when the interpreter exits. A real coordinator
process; a scripted proxy in front of it counts the calls that reach it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from scripted_coordinator import ScriptedCoordinator

import twostep.client._coordinator_outbox as outbox_module
from twostep.client._coordinator_client import BranchInfo, CoordinatorClient
from twostep.client.tpc.xid import Xid, new_gtrid
from twostep.testing import CoordinatorProcess
from twostep.v1 import coordinator_pb2 as pb

LONG_LINGER_S = 60.0  # longer than any wait here: only a flush, an Abort or exit sends


@pytest.fixture
def proxy(coordinator: CoordinatorProcess) -> Iterator[ScriptedCoordinator]:
    scripted = ScriptedCoordinator(coordinator.address, [])
    yield scripted
    scripted.close()


@pytest.fixture
def long_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "ACK_LINGER_S", LONG_LINGER_S)


def minted(client: CoordinatorClient) -> str:
    """A gtrid this client owns, as `global_transaction()` makes one."""
    described = client.description(rpc_timeout=10)
    deadline_s = math.ceil(time.time() + described.clock_offset_s + 30)
    return new_gtrid(described.cluster, deadline_s, minted=True, owner=described.owner)


def committed(client: CoordinatorClient) -> str:
    """A gtrid the coordinator decided COMMIT for, on databases it does not know (it leaves
    such a transaction in doubt until the client's Ack says phase 2 is done)."""
    gtrid = minted(client)
    branches = [
        BranchInfo("orders", "orders", "postgresql"),
        BranchInfo("billing", Xid.for_branch(gtrid, "billing", 7).bqual, "mysql", 7),
    ]
    decided = client.commit(gtrid, branches, rpc_timeout=10)
    assert decided is not None and decided.committed
    return gtrid


@pytest.mark.usefixtures("long_linger")
def test_acks_posted_while_the_first_lingers_share_one_call(
    proxy: ScriptedCoordinator, coordinator: CoordinatorProcess
) -> None:
    client = CoordinatorClient(proxy.address)
    gtrids = [committed(client) for _ in range(3)]
    for gtrid in gtrids:
        client.ack(gtrid)
        time.sleep(0.05)  # time enough for a sender that does not linger to send each alone

    assert client.flush(timeout=10)
    assert [[a.gtrid for a in r.transactions] for r in proxy.requests["Ack"]] == [gtrids]
    for gtrid in gtrids:  # the coordinator writes Acks down behind its reply: polled
        assert coordinator.wait_for(gtrid, lambda t: t.completed)


@pytest.mark.usefixtures("long_linger")
def test_an_abort_goes_at_once_and_takes_the_waiting_acks_along(
    proxy: ScriptedCoordinator, coordinator: CoordinatorProcess
) -> None:
    client = CoordinatorClient(proxy.address)
    acked, aborted = committed(client), minted(client)
    client.ack(acked)
    client.abort(aborted, "the block raised", [])

    # No flush: only the Abort ends the Ack's linger.
    assert coordinator.wait_for(aborted, lambda t: t.state_name == "ABORTED")
    assert coordinator.wait_for(acked, lambda t: t.completed)


def test_acks_still_lingering_are_sent_when_the_interpreter_exits(
    coordinator: CoordinatorProcess,
) -> None:
    gtrid = committed(CoordinatorClient(coordinator.address))
    script = textwrap.dedent(
        f"""
        import twostep.client._coordinator_outbox as outbox
        from twostep.client._coordinator_client import client_for

        outbox.ACK_LINGER_S = {LONG_LINGER_S}
        client_for({coordinator.address!r}).ack({gtrid!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], timeout=30, check=True)

    assert coordinator.wait_for(gtrid, lambda t: t.completed)


def test_a_fork_waits_for_the_outbox_call_in_flight_before_it_forks():
    # A thread inside a gRPC call at a fork makes grpc skip its fork handlers, and the child's
    # own calls then fail or hang (the outbox's `_pause_sends`): the fork waits for the call.
    entered, ended = threading.Event(), threading.Event()

    def send(aborts: object, acks: object) -> None:
        entered.set()
        time.sleep(0.3)  # a call on the wire (well within FORK_WAIT_S)
        ended.set()

    outbox = outbox_module.CoordinatorOutbox(send)
    outbox.post(pb.AbortItem(gtrid="g"))  # an Abort goes at once
    assert entered.wait(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert ended.is_set()  # forked only once the call had ended
