"""`global_transaction()`: one atomic commit across several databases, through the coordinator.

The protocol is DESIGN.md §2. The client's side of it, in the order it happens:
1. A branch starts on the first use of each named connection inside the block. PostgreSQL
   needs no id until PREPARE; MySQL needs the xid at `XA START`, so the first MySQL branch (or
   the second branch of any kind) asks the coordinator for a gtrid. A block that touches one
   PostgreSQL database therefore never talks to the coordinator.
2. On exit, one branch commits with one phase. Two or more: PREPARE all in parallel; any NO
   vote or error rolls every branch back (Commit was never sent, so nobody can decide COMMIT).
3. Commit is sent only after checking that the coordinator is reachable: if it is not, the
   request certainly never left and the client still rolls back. Once Commit may have left, a
   lost reply is not an abort: the client asks again until its patience runs out, then closes
   its branch sessions (MariaDB detaches prepared branches) and raises `OutcomeUnknown`.
4. COMMITTED: commit every branch in parallel, retrying and reconnecting; then Ack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from . import _failpoints
from ._connections import Connection
from ._coordinator_client import RETRYABLE, BranchInfo, CoordinatorClient, Decided, client_for
from ._errors import (
    CoordinatorUnavailable,
    HeuristicOutcome,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    TransactionAborted,
    TwostepError,
    is_connection_failure,
)
from ._phase2 import finish_prepared, release_session
from ._scope import activate, current_scope
from ._tpc import BranchOps, VoteNo, require_two_phase
from ._xid import Xid

__all__ = ["GlobalTransaction", "global_transaction"]

log = logging.getLogger("twostep.client")

DEFAULT_COORDINATOR = "127.0.0.1:50051"
_RPC_TIMEOUT = 5.0  # one coordinator call; a decision costs one fsync, so this is generous
_PROBE_TIMEOUT = 2.0  # how long to wait for a connection to the coordinator before Commit
_OUTCOME_PATIENCE = 10.0  # after the deadline, how long to keep asking for a lost decision

# Prepare and phase 2 run on the branches in parallel; the first branch runs on the caller.
_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="twostep-branch")


@dataclass
class _Branch:
    connection: Connection
    ops: BranchOps
    session: Any
    xid: Xid | None  # None: a PostgreSQL branch begun before the gtrid existed
    session_id: int = 0
    prepared: bool = False

    @property
    def name(self) -> str:
        return self.connection.name

    def info(self) -> BranchInfo:
        return BranchInfo(self.name, self.ops.dialect, self.session_id)


class GlobalTransaction:
    """The state of one `global_transaction()` block; `gtrid` names it to the admin CLI."""

    def __init__(self, coordinator: str, timeout: float):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.coordinator = coordinator
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._gtrid: str | None = None
        self._branches: dict[str, _Branch] = {}
        self._rollback_only: str | None = None
        self._finished = False
        # Guards _branches and _gtrid: statements of one block may come from several threads
        # that share its context. Never held across a coordinator call's retries.
        self._lock = threading.Lock()

    @property
    def gtrid(self) -> str | None:
        """The global id, or None while the block has not needed the coordinator."""
        return self._gtrid

    def _client(self) -> CoordinatorClient:
        return client_for(self.coordinator)

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    # -- inside the block ---------------------------------------------------------------------

    def session_for(self, connection: Connection, origin: str | None) -> Any:
        with self._lock:
            if self._finished:
                raise TwostepError("this global transaction has already ended")
            branch = self._branches.get(connection.name)
            if branch is None:
                branch = self._start_branch(connection, origin)
                self._branches[connection.name] = branch
            return branch.session

    def _start_branch(self, connection: Connection, origin: str | None) -> _Branch:
        ops = require_two_phase(connection.dialect.name, connection=connection.name, origin=origin)
        remaining = self._remaining()
        if remaining <= 0:
            raise TransactionAborted("the global transaction's deadline passed", gtrid=self._gtrid)
        needs_xid = ops.dialect != "postgresql" or self._branches
        xid = Xid.of(self._ensure_gtrid(), connection.name) if needs_xid else None
        session = connection.acquire()
        try:
            ops.begin(session, xid, lock_timeout_ms=int(remaining * 1000))
            session_id = ops.session_id(session)
        except BaseException:
            connection.release(session, discard=True)
            raise
        return _Branch(connection, ops, session, xid, session_id)

    def _ensure_gtrid(self) -> str:
        if self._gtrid is None:
            self._gtrid, _ = self._client().begin(self._remaining(), rpc_timeout=_RPC_TIMEOUT)
        return self._gtrid

    def _mark_rollback_only(self, why: str) -> None:
        self._rollback_only = self._rollback_only or why

    # -- the end of the block -----------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        """Roll back every branch; tell the coordinator if it knows the gtrid."""
        self._finished = True
        branches = list(self._branches.values())
        left = _rollback_all(branches)
        if self._gtrid is not None:
            self._client().abort(self._gtrid, reason, [b.info() for b in branches])
        if left:
            log.error(
                "prepared branches could not be rolled back; the coordinator will",
                extra={"gtrid": self._gtrid, "branches": left},
            )

    def _commit(self) -> None:
        self._finished = True
        branches = list(self._branches.values())
        if self._rollback_only:
            self._abort(self._rollback_only)
            raise TransactionAborted(f"rolled back: {self._rollback_only}", gtrid=self._gtrid)
        if not branches:
            return
        if len(branches) == 1:
            self._commit_one_phase(branches[0])
        else:
            self._commit_two_phase(branches)

    def _commit_one_phase(self, branch: _Branch) -> None:
        try:
            branch.ops.commit_one_phase(branch.session, branch.xid)
        except VoteNo as exc:
            release_session(branch, discard=True)
            raise TransactionAborted(
                f"{branch.name} rolled the transaction back: {exc}", gtrid=self._gtrid
            ) from exc
        except TwostepError as exc:
            release_session(branch, discard=True)
            if is_connection_failure(exc):
                raise OutcomeUnknown(
                    f"the connection to {branch.name} failed during its one-phase commit; "
                    "only that database knows whether it committed",
                    gtrid=self._gtrid,
                ) from exc
            raise
        release_session(branch)
        if self._gtrid is not None:
            self._client().ack(self._gtrid, one_phase_commit=True)

    def _commit_two_phase(self, branches: list[_Branch]) -> None:
        try:
            gtrid = self._ensure_gtrid()
        except CoordinatorUnavailable:
            self._abort("coordinator unavailable")
            raise
        for branch in branches:
            if branch.xid is None:
                branch.xid = Xid.of(gtrid, branch.name)
        if self._remaining() <= 0:
            self._abort("deadline passed before prepare")
            raise TransactionAborted("the global transaction's deadline passed", gtrid=gtrid)

        _failpoints.failpoint(_failpoints.BEFORE_PREPARE)
        prepared = _on_each(branches, _prepare, between=_failpoints.BETWEEN_PREPARES)
        failures = [(b, out) for b, out in prepared if out is not None]
        if failures:
            branch, exc = failures[0]
            self._abort(f"{branch.name} voted NO")
            raise TransactionAborted(
                f"{branch.name} could not prepare, every branch was rolled back: {exc}",
                gtrid=gtrid,
            ) from exc

        client = self._client()
        if not client.reachable(within=min(_PROBE_TIMEOUT, max(0.2, self._remaining()))):
            self._abort("coordinator unreachable before Commit")
            raise CoordinatorUnavailable(
                f"coordinator {self.coordinator} unreachable before Commit was sent; "
                f"every branch of {gtrid} was rolled back, nothing was committed"
            )
        _failpoints.failpoint(_failpoints.BEFORE_COMMIT_REQUEST)
        decided = self._ask_for_commit(client, gtrid, branches)
        if not decided.committed:
            self._abort(f"coordinator decided ABORT: {decided.reason}")
            raise TransactionAborted(
                f"the coordinator decided ABORT ({decided.reason}); every branch was rolled back",
                gtrid=gtrid,
            )
        _failpoints.failpoint(_failpoints.AFTER_DECISION)
        self._finish_committed(client, gtrid, branches)

    def _ask_for_commit(
        self, client: CoordinatorClient, gtrid: str, branches: Sequence[_Branch]
    ) -> Decided:
        infos = [b.info() for b in branches]
        give_up = max(self._deadline, time.monotonic()) + _OUTCOME_PATIENCE
        delay = 0.05
        while True:
            try:
                decided = client.commit(gtrid, infos, rpc_timeout=_RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    # Refused whole: nothing was recorded, so rolling back is still ours to do.
                    self._abort(f"Commit refused: {exc.code().name}")
                    raise TransactionAborted(
                        f"the coordinator refused Commit ({exc.code().name}: {exc.details()}); "
                        "every branch was rolled back",
                        gtrid=gtrid,
                    ) from exc
                if time.monotonic() + delay > give_up:
                    self._detach(branches)
                    raise OutcomeUnknown(
                        f"Commit of {gtrid} was sent but no answer came from "
                        f"{self.coordinator} ({exc.code().name}); the branches are prepared "
                        "and the coordinator alone will finish them: look up the gtrid",
                        gtrid=gtrid,
                    ) from exc
                log.warning(
                    "Commit unanswered, asking again",
                    extra={"gtrid": gtrid, "status": exc.code().name},
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            return decided

    def _detach(self, branches: Sequence[_Branch]) -> None:
        for branch in branches:
            release_session(branch, discard=True)

    def _finish_committed(
        self, client: CoordinatorClient, gtrid: str, branches: list[_Branch]
    ) -> None:
        outcomes = _on_each(
            branches,
            lambda b: finish_prepared(b, commit=True),
            between=_failpoints.BETWEEN_COMMITS,
        )
        for branch, outcome in outcomes:
            if isinstance(outcome, Exception):
                log.error(
                    "COMMIT PREPARED failed", extra={"xid": str(branch.xid)}, exc_info=outcome
                )
                release_session(branch, discard=True)  # closed: the coordinator can finish it
        pending = [b.name for b, done in outcomes if done is None or isinstance(done, Exception)]
        heuristic = [b.name for b, done in outcomes if done is False]
        if heuristic:
            raise HeuristicOutcome(
                f"{gtrid} was decided COMMIT but {', '.join(heuristic)} rolled back",
                gtrid=gtrid,
            )
        if pending:
            raise PhaseTwoIncomplete(
                f"{gtrid} is committed (the decision is durable) but "
                f"{', '.join(pending)} could not be committed yet; the coordinator will",
                gtrid=gtrid,
                pending=pending,
            )
        client.ack(gtrid)


def _prepare(branch: _Branch) -> None:
    assert branch.xid is not None
    branch.ops.prepare(branch.session, branch.xid)
    branch.prepared = True


def _rollback_all(branches: list[_Branch]) -> list[str]:
    """Roll every branch back; the names of prepared branches that are still prepared."""
    left = []
    for branch, done in _on_each(branches, _rollback_one):
        if done is not True:
            log.error("rollback failed", extra={"branch": branch.name, "outcome": repr(done)})
            release_session(branch, discard=True)  # closed: the coordinator can finish it
            left.append(branch.name)
    return left


def _rollback_one(branch: _Branch) -> bool | None:
    if branch.prepared:
        return finish_prepared(branch, commit=False)
    try:
        branch.ops.rollback_unprepared(branch.session, branch.xid)
    except TwostepError:
        release_session(branch, discard=True)
        if branch.xid is None:
            return True  # never prepared: the dead session took its transaction along
        # A PREPARE whose reply was lost may have left the branch prepared: look and finish.
        return finish_prepared(branch, commit=False)
    release_session(branch)
    return True


def _on_each(
    branches: list[_Branch], step: Callable[[_Branch], Any], *, between: str | None = None
) -> list[tuple[_Branch, Any]]:
    """Run `step` on every branch in parallel: (branch, its result or the Exception it raised).

    The first branch runs on the caller's thread; a lone extra hop per branch is the cost.
    When the failpoint `between` is armed (fault tests only), the branches run one after the
    other and the failpoint fires after the first, so that step is hit exactly.
    """
    if not branches:
        return []

    def run(branch: _Branch) -> Any:
        try:
            return step(branch)
        except Exception as exc:
            return exc

    if between is not None and _failpoints.is_armed(between):
        results = [(branches[0], run(branches[0]))]
        _failpoints.failpoint(between)
        results.extend((b, run(b)) for b in branches[1:])
        return results
    futures = [_pool.submit(run, b) for b in branches[1:]]
    results = [(branches[0], run(branches[0]))]
    results.extend((b, f.result()) for b, f in zip(branches[1:], futures, strict=True))
    return results


@contextlib.contextmanager
def global_transaction(
    coordinator: str | None = None, timeout: float = 30.0
) -> Iterator[GlobalTransaction]:
    """Run the block as one atomic transaction across every database it touches.

    `coordinator` defaults to $TWOSTEP_COORDINATOR or 127.0.0.1:50051; `timeout` (seconds)
    bounds the whole transaction and every lock wait in it. Nested blocks join the outer one
    (their arguments are ignored); an exception escaping a nested block dooms the outer one.
    """
    outer = current_scope()
    if isinstance(outer, GlobalTransaction):
        try:
            yield outer
        except BaseException as exc:
            outer._mark_rollback_only(f"an inner block raised {type(exc).__name__}")
            raise
        return
    if outer is not None:
        raise TwostepError("global_transaction() cannot start inside a local Transaction")
    address = coordinator or os.environ.get("TWOSTEP_COORDINATOR") or DEFAULT_COORDINATOR
    gtx = GlobalTransaction(address, timeout)
    with activate(gtx):
        try:
            yield gtx
        except BaseException as exc:
            gtx._abort(f"the block raised {type(exc).__name__}")
            raise
    gtx._commit()
