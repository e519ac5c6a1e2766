"""The benchmark's only use of twostep internals: update these functions when they change.

Everything else in `bench/` goes through the public API (`twostep.client`, `twostep.testing`).
Two things have no public API, on purpose:
- `mint_gtrid` / `decide_once` / `commit_decision`: the coordinator calls one global
  transaction makes, without databases (the coordinator-alone mode; the recovery mode's
  setup). They mirror what `client/_global.py` sends today for a transaction with a MySQL
  branch and a PostgreSQL branch: Describe (once per process, then cached), the gtrid minted
  here (`ts2`), the reachability probe before Commit (free on a connected channel), Commit
  (both branches, coalesced with concurrent ones), then Ack (queued; sent in batches by the
  client's background sender).
- `prepare_branch`: a prepared branch left behind by a client that died (the recovery mode),
  made with the branch layer the client and the coordinator share (`twostep.client.tpc`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from twostep.client import Connection
from twostep.client._coordinator_client import BranchInfo, client_for
from twostep.client.tpc import Xid, new_gtrid, require_two_phase

from ._env import MY_NAME, PG_NAME

__all__ = ["commit_decision", "decide_once", "mint_gtrid", "prepare_branch"]

_RPC_TIMEOUT_S = 10.0


def _branch(resource: str, dialect: str, session_id: int = 0) -> BranchInfo:
    """A branch as the client reports it: a MySQL bqual names its owner session (tpc.xid)."""
    bqual = f"{resource}#{session_id}" if session_id else resource
    return BranchInfo(resource, bqual, dialect, session_id=session_id)


def mint_gtrid(address: str, timeout_s: float) -> str:
    """A gtrid the way the client makes one: from the coordinator's (cached) description,
    with a deadline `timeout_s` from now by the coordinator's clock (cut to its max_timeout,
    as the client cuts a block's)."""
    described = client_for(address).description(rpc_timeout=_RPC_TIMEOUT_S)
    timeout_s = min(timeout_s, described.max_timeout_s)
    deadline_s = math.ceil(time.time() + described.clock_offset_s + timeout_s)
    return new_gtrid(described.cluster, deadline_s, minted=True, owner=described.owner)


def decide_once(address: str, session_id: int = 1) -> bool:
    """One decision the way the client library asks for it: True if COMMITTED.

    `session_id` stands for the MySQL branch's owner session (one per client thread).
    Raises `CoordinatorUnavailable` / `grpc.RpcError` as the client's calls do.
    """
    client = client_for(address)
    gtrid = mint_gtrid(address, 30.0)
    if not client.reachable(within=_RPC_TIMEOUT_S):
        raise RuntimeError(f"coordinator {address} unreachable before Commit")
    branches = [_branch(PG_NAME, "postgresql"), _branch(MY_NAME, "mysql", session_id)]
    decided = client.commit(gtrid, branches, rpc_timeout=_RPC_TIMEOUT_S)
    committed = decided is not None and decided.committed
    if committed:
        client.ack(gtrid)
    return committed


def commit_decision(address: str, gtrid: str, resources: dict[str, str]) -> bool:
    """Commit (decide) `gtrid` with branches on `resources` (name: dialect), no Ack, as a
    client that dies right after the decision; True if COMMITTED."""
    branches = [_branch(name, dialect) for name, dialect in resources.items()]
    decided = client_for(address).commit(gtrid, branches, rpc_timeout=_RPC_TIMEOUT_S)
    return decided is not None and decided.committed


def prepare_branch(
    connection: Connection, session: Any, gtrid: str, sql: str, params: tuple[Any, ...]
) -> None:
    """Start the branch of `gtrid` on `connection` (named as the coordinator's resource) in
    `session` (from `connection.connect()`), run one `?` statement, PREPARE it. The caller
    closes the session (a MySQL/MariaDB branch stays attached to it until then)."""
    ops = require_two_phase(connection.dialect.name, connection=connection.name)
    xid = Xid.for_branch(gtrid, connection.name)
    ops.begin(session, xid, None)
    connection.dialect.run(session, sql, params, connection=connection.name)
    ops.prepare(session, xid)
