"""The branches of one global transaction: what each holds, and the steps run on all of them.

A branch is one named connection's part of a `global_transaction()` (or one session the
application enlisted under a resource name, `_enlist`): its session, its xid, and how far it
got (may it have written, prepared, ended). The steps that run on every
branch at once (prepare, roll back, phase 2) run in parallel on a small thread pool, the
first branch on the caller's thread, while no other transaction of this process is at such a
step; else one branch after the other on the caller's thread (`on_each`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import _fork
from ._connections import Connection
from ._coordinator_client import BranchInfo
from ._enlist import Enlisted
from ._errors import TwostepError
from .tpc import failpoints as _failpoints
from .tpc.operations import BranchOps, VoteNo
from .tpc.phase2 import Ended, finish_prepared, release_session
from .tpc.xid import Xid

__all__ = ["Branch", "end_reader", "on_each", "prepare", "rollback_all"]

log = logging.getLogger("twostep.client")


def _branch_pool() -> ThreadPoolExecutor:
    # Prepare and phase 2 run on the branches in parallel; the first branch runs on the caller.
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="twostep-branch")


#: `on_each` runs branches in parallel only while at most this many `on_each` calls run in the
#: process (its own included). Alone, a step then takes the slowest branch's time instead of
#: the sum; under load the databases are kept busy by the other transactions anyway, and each
#: hand-off to the pool costs the client CPU they would use. Measured (bench transfer,
#: PostgreSQL + MariaDB, 2 cores, client CPU per transfer parallel -> sequential): 2.72 ->
#: 2.35 ms at 1 client, 2.33 -> 2.00 at 8, 1.96 -> 1.79 at 32, the same txn/s at 1 and 8,
#: +4 % at 32.
PARALLEL_WHILE_AT_MOST = 1

_pool = _branch_pool()
_running = 0  # on_each calls running now
_running_lock = threading.Lock()  # guards _running


@_fork.in_child
def _forget_pool() -> None:
    global _pool, _running, _running_lock
    _pool = _branch_pool()  # the inherited pool's threads did not survive the fork
    _running, _running_lock = 0, threading.Lock()  # nor did the parent's other callers


@dataclass(eq=False)
class Branch:
    #: Where the session comes from and goes back to: a twostep connection's pool, or the
    #: application that enlisted it.
    connection: Connection | Enlisted
    ops: BranchOps
    session: Any
    xid: Xid | None  # None: a PostgreSQL branch begun before the gtrid existed
    session_id: int = 0
    #: The deadline (monotonic s) its lock timeout was computed from.
    bound: float = 0.0
    #: A statement that is not a plain read ran on it (else it is asked before PREPARE).
    may_write: bool = False
    prepared: bool = False
    #: Finished (read-only, one-phase, rolled back or committed) or detached.
    ended: bool = False
    transaction_id: int | None = None  # PostgreSQL: xid8 of the prepared transaction
    #: The transaction has begun to end: no statement may reach the session any more.
    closed: bool = False
    #: Held while a statement runs on the session, and by the end of the block.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.connection.name

    def info(self) -> BranchInfo:
        bqual = self.xid.bqual if self.xid is not None else self.name
        return BranchInfo(
            self.name, bqual, self.ops.dialect, self.session_id, self.transaction_id or 0
        )


def prepare(branch: Branch) -> None:
    assert branch.xid is not None
    branch.transaction_id = branch.ops.prepare(branch.session, branch.xid)
    branch.prepared = True


def end_reader(branch: Branch) -> None:
    """End a branch that wrote nothing: one-phase commit (a failure loses nothing: it wrote
    nothing, and its dead session took the transaction along)."""
    branch.ended = True
    try:
        branch.ops.commit_one_phase(branch.session, branch.xid)
    except (TwostepError, VoteNo) as exc:
        log.debug(
            "read-only branch ended by its rollback", extra={"branch": branch.name, "why": exc}
        )
        release_session(branch, discard=True)
        return
    release_session(branch)


def rollback_all(branches: list[Branch]) -> list[str]:
    """Roll every branch back; the names of prepared branches that are still prepared."""
    left = []
    for branch, done in on_each(branches, _rollback_one):
        branch.ended = True
        if done is not True:
            log.error("rollback failed", extra={"branch": branch.name, "outcome": repr(done)})
            release_session(branch, discard=True)  # closed: the coordinator can finish it
            left.append(branch.name)
    return left


def _rollback_one(branch: Branch) -> bool | Ended:
    if branch.prepared:
        return _rolled_back(finish_prepared(branch, commit=False))
    try:
        branch.ops.rollback_unprepared(branch.session, branch.xid)
    except TwostepError:
        release_session(branch, discard=True)
        if branch.xid is None:
            return True  # never prepared: the dead session took its transaction along
        # A PREPARE whose reply was lost may have left the branch prepared: look and finish.
        return _rolled_back(finish_prepared(branch, commit=False))
    release_session(branch)
    return True


def _rolled_back(ended: Ended) -> bool | Ended:
    # UNVERIFIED: not prepared any more, and before any decision nobody could commit it.
    return True if ended in (Ended.AS_ASKED, Ended.UNVERIFIED) else ended


def on_each(
    branches: list[Branch], step: Callable[[Branch], Any], *, between: str | None = None
) -> list[tuple[Branch, Any]]:
    """Run `step` on every branch: (branch, its result or the Exception it raised).

    In parallel while few other calls run in this process (`PARALLEL_WHILE_AT_MOST`): the
    first branch on the caller's thread, one hop to the pool per other branch; else one after
    the other on the caller's thread. When the failpoint `between` is armed (fault tests
    only), the branches run one after the other and the failpoint fires after the first, so
    that step is hit exactly.
    """
    if not branches:
        return []

    def run(branch: Branch) -> Any:
        try:
            return step(branch)
        except Exception as exc:
            return exc

    if between is not None and _failpoints.is_armed(between):
        results = [(branches[0], run(branches[0]))]
        _failpoints.failpoint(between)
        results.extend((b, run(b)) for b in branches[1:])
        return results
    global _running
    with _running_lock:
        _running += 1
        parallel = _running <= PARALLEL_WHILE_AT_MOST
    try:
        if not parallel or len(branches) == 1:
            return [(b, run(b)) for b in branches]
        futures = [_pool.submit(run, b) for b in branches[1:]]
        results = [(branches[0], run(branches[0]))]
        results.extend((b, f.result()) for b, f in zip(branches[1:], futures, strict=True))
        return results
    finally:
        with _running_lock:
            _running -= 1
