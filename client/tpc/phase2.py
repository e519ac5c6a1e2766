"""Phase 2 on one prepared branch: idempotent, retried, and honest about "unknown xid".

Used by the client after a decision and by the coordinator's recovery. A step that answers
"unknown xid" counts as finished only once the database no longer lists the xid as prepared
(design invariant 5): MariaDB gives the same answer for a branch that is still attached to a
live session, and that branch is not done. A branch that is gone is not assumed to have ended
as asked: where the database can tell (PostgreSQL, by the transaction id recorded at PREPARE)
it is asked; where it cannot (MySQL/MariaDB), the answer says so (`Ended.UNVERIFIED`).
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any, Protocol

from .._errors import PoolTimeout, TwostepError, is_connection_failure
from .operations import BranchOps, Finish
from .xid import Xid

__all__ = ["Ended", "PreparedBranch", "ended_by_status", "finish_prepared", "release_session"]

log = logging.getLogger("twostep.client")

_PATIENCE = 10.0  # seconds of retrying one branch before leaving it to the coordinator


class Ended(enum.Enum):
    """How `finish_prepared` left a branch."""

    #: Committed (or rolled back) as asked, or found to have ended that way already.
    AS_ASKED = "as asked"
    #: Found ended the other way: a heuristic outcome (e.g. rolled back by hand).
    OTHER_WAY = "the other way"
    #: Still prepared when patience ran out (busy, session lost, held by a live session).
    STILL_PREPARED = "still prepared"
    #: No longer prepared, and the database cannot tell how it ended (MariaDB; PostgreSQL
    #: without the branch's transaction id, or once its commit log was truncated).
    UNVERIFIED = "gone, unverified"


class _Pool(Protocol):
    name: str

    def acquire(self) -> Any: ...
    def release(self, session: Any, *, discard: bool = False) -> None: ...


class PreparedBranch(Protocol):
    connection: _Pool
    ops: BranchOps
    session: Any  # None once the session was lost; a new one is acquired
    xid: Xid | None
    #: PostgreSQL: the xid8 of the prepared transaction (0 or None: unknown).
    transaction_id: int | None


def finish_prepared(
    branch: PreparedBranch, *, commit: bool, patience: float = _PATIENCE, quiet: bool = False
) -> Ended:
    """COMMIT or ROLLBACK PREPARED the branch, retrying; reconnects if its session is lost.

    Returns how the branch ended (see `Ended`); STILL_PREPARED after `patience` seconds, when
    the coordinator must finish it. Raises `TwostepError` for a database error that is not a
    lost session (e.g. permission denied). `quiet`: the caller reports a branch left prepared
    itself (recovery probes every pass).
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
                return Ended.AS_ASKED
            if result is Finish.ROLLED_BACK:
                release_session(branch)
                return Ended.OTHER_WAY if commit else Ended.AS_ASKED
            if result is Finish.NOT_FOUND and not branch.ops.is_prepared(
                branch.session, branch.xid
            ):
                status = branch.ops.ended_as(branch.session, branch.transaction_id)
                release_session(branch)
                return ended_by_status(status, commit)
            why = result.value  # BUSY, or NOT_FOUND while still listed: a live owner session
        except PoolTimeout as exc:  # every session busy: wait, like a lost one
            why = f"no session free: {exc}"
        except TwostepError as exc:
            if not is_connection_failure(exc):
                raise
            why = f"session lost: {exc}"
            release_session(branch, discard=True)
        if time.monotonic() + delay > give_up:
            log.log(
                logging.DEBUG if quiet else logging.ERROR,
                "branch left prepared",
                extra={
                    "gtrid": branch.xid.gtrid,
                    "xid": str(branch.xid),
                    "commit": commit,
                    "why": why,
                },
            )
            release_session(branch, discard=True)
            return Ended.STILL_PREPARED
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def ended_by_status(status: str | None, commit: bool) -> Ended:
    """How a branch that is gone ended, by what its database says of its transaction
    (`BranchOps.ended_as`): 'committed', 'aborted', or anything else (unknown)."""
    if status == "committed":
        return Ended.AS_ASKED if commit else Ended.OTHER_WAY
    if status == "aborted":
        return Ended.OTHER_WAY if commit else Ended.AS_ASKED
    return Ended.UNVERIFIED


def release_session(branch: PreparedBranch, *, discard: bool = False) -> None:
    """Give the branch's session back (closed if `discard`). What the branch set on it stays
    until the session is taken for anything but a branch (`Connection.acquire` puts it back),
    so the next branch on it needs no SET."""
    session = branch.session
    if session is None:
        return
    branch.session = None
    branch.connection.release(session, discard=discard)
