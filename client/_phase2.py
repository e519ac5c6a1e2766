"""Phase 2 on one prepared branch: idempotent, retried, and honest about "unknown xid".

Used by the client after a decision and (later) by the coordinator's recovery. A step that
answers "unknown xid" counts as finished only once the database no longer lists the xid as
prepared (DESIGN.md invariant 5): MariaDB gives the same answer for a branch that is still
attached to a live session, and that branch is not done.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ._errors import TwostepError, is_connection_failure
from ._tpc import BranchOps, Finish
from ._xid import Xid

__all__ = ["PreparedBranch", "finish_prepared", "release_session"]

log = logging.getLogger("twostep.client")

_PATIENCE = 10.0  # seconds of retrying one branch before leaving it to the coordinator


class _Pool(Protocol):
    name: str

    def acquire(self) -> Any: ...
    def release(self, session: Any, *, discard: bool = False) -> None: ...


class PreparedBranch(Protocol):
    connection: _Pool
    ops: BranchOps
    session: Any  # None once the session was lost; a new one is acquired
    xid: Xid | None


def finish_prepared(
    branch: PreparedBranch, *, commit: bool, patience: float = _PATIENCE, quiet: bool = False
) -> bool | None:
    """COMMIT or ROLLBACK PREPARED the branch, retrying; reconnects if its session is lost.

    True: finished as asked. False: the database had ended it the other way (a heuristic
    outcome). None: still prepared after `patience` seconds; the coordinator must finish it.
    `quiet`: the caller reports a branch left prepared itself (recovery probes every pass).
    """
    assert branch.xid is not None
    give_up = time.monotonic() + patience
    delay = 0.02
    while True:
        try:
            if branch.session is None:
                branch.session = branch.connection.acquire()
            step = branch.ops.commit_prepared if commit else branch.ops.rollback_prepared
            result = step(branch.session, branch.xid)
            if result is Finish.DONE:
                release_session(branch)
                return True
            if result is Finish.ROLLED_BACK:
                release_session(branch)
                return not commit
            if result is Finish.NOT_FOUND and not branch.ops.is_prepared(
                branch.session, branch.xid
            ):
                release_session(branch)
                return True
            why = result.value  # BUSY, or NOT_FOUND while still listed: a live owner session
        except TwostepError as exc:
            if not is_connection_failure(exc):
                raise
            why = f"session lost: {exc}"
            release_session(branch, discard=True)
        if time.monotonic() + delay > give_up:
            log.log(
                logging.DEBUG if quiet else logging.ERROR,
                "branch left prepared",
                extra={"xid": str(branch.xid), "commit": commit, "why": why},
            )
            release_session(branch, discard=True)
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def release_session(branch: PreparedBranch, *, discard: bool = False) -> None:
    if branch.session is not None:
        branch.connection.release(branch.session, discard=discard)
        branch.session = None
