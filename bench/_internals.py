"""The benchmark's only use of twostep internals: update these functions when they change.

Everything else in `bench/` goes through the public API (`twostep.client`, `twostep.testing`).
Two things have no public API, on purpose:
- `decide_once` / `begin_only` / `commit_decision`: the coordinator calls one global
  transaction makes, without databases (the coordinator-alone mode; the recovery mode's
  setup). They mirror what `client/_global.py` sends today for
  a transaction with a MySQL branch and a PostgreSQL branch: Begin (carrying the MySQL branch,
  whose XA START needs the gtrid), the reachability probe before Commit, Commit (both
  branches), then Ack (queued; sent in batches by the client's background sender).
- `prepare_branch`: a prepared branch left behind by a client that died (the recovery mode),
  made with the branch layer the client and the coordinator share (`twostep.client.tpc`).
"""

from __future__ import annotations

from typing import Any

from twostep.client import Connection
from twostep.client._coordinator_client import BranchInfo, client_for
from twostep.client.tpc import Xid, require_two_phase

from ._env import MY_NAME, PG_NAME

__all__ = ["begin_only", "commit_decision", "decide_once", "prepare_branch"]

_RPC_TIMEOUT_S = 10.0
_PG = BranchInfo(PG_NAME, "postgresql")


def begin_only(address: str, timeout_s: float, session_id: int = 1) -> str:
    """Begin one transaction (with a MySQL branch, as its XA START needs); its gtrid."""
    branch = BranchInfo(MY_NAME, "mysql", session_id=session_id)
    return client_for(address).begin(timeout_s, [branch], rpc_timeout=_RPC_TIMEOUT_S).gtrid


def decide_once(address: str, session_id: int = 1) -> bool:
    """One decision the way the client library asks for it: True if COMMITTED.

    `session_id` stands for the MySQL branch's owner session (one per client thread).
    Raises `CoordinatorUnavailable` / `grpc.RpcError` as the client's calls do.
    """
    client = client_for(address)
    my = BranchInfo(MY_NAME, "mysql", session_id=session_id)
    gtrid = client.begin(30.0, [my], rpc_timeout=_RPC_TIMEOUT_S).gtrid
    if not client.reachable(within=_RPC_TIMEOUT_S):
        raise RuntimeError(f"coordinator {address} unreachable before Commit")
    decided = client.commit(gtrid, [_PG, my], rpc_timeout=_RPC_TIMEOUT_S)
    committed = decided is not None and decided.committed
    if committed:
        client.ack(gtrid)
    return committed


def commit_decision(address: str, gtrid: str, resources: dict[str, str]) -> bool:
    """Commit (decide) `gtrid` with branches on `resources` (name: dialect), no Ack, as a
    client that dies right after the decision; True if COMMITTED."""
    branches = [BranchInfo(name, dialect) for name, dialect in resources.items()]
    decided = client_for(address).commit(gtrid, branches, rpc_timeout=_RPC_TIMEOUT_S)
    return decided is not None and decided.committed


def prepare_branch(
    connection: Connection, session: Any, gtrid: str, sql: str, params: tuple[Any, ...]
) -> None:
    """Start the branch of `gtrid` on `connection` (named as the coordinator's resource) in
    `session` (from `connection.connect()`), run one `?` statement, PREPARE it. The caller
    closes the session (a MySQL/MariaDB branch stays attached to it until then)."""
    ops = require_two_phase(connection.dialect.name, connection=connection.name)
    xid = Xid.of(gtrid, connection.name)
    ops.begin(session, xid, None)
    connection.dialect.run(session, sql, params, connection=connection.name)
    ops.prepare(session, xid)
