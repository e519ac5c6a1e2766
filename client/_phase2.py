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

import psycopg
import pymysql

from ._errors import TwostepError
from ._tpc import BranchOps, Finish
from ._xid import Xid

__all__ = ["PreparedBranch", "finish_prepared", "is_connection_failure", "release_session"]

log = logging.getLogger("twostep.client")

_PATIENCE = 10.0  # seconds of retrying one branch before leaving it to the coordinator
_FIRST_SERVER_ONLY_CLIENT_ERRNO = 2000  # MySQL client-side errors (CR_*) start here


class _Pool(Protocol):
    name: str

    def acquire(self) -> Any: ...
    def release(self, session: Any, *, discard: bool = False) -> None: ...


class PreparedBranch(Protocol):
    connection: _Pool
    ops: BranchOps
    session: Any  # None once the session was lost; a new one is acquired
    xid: Xid | None


def is_connection_failure(exc: BaseException) -> bool:
    """Whether the session itself failed (so the server's verdict is unknown to us)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, psycopg.OperationalError) and not getattr(cause, "sqlstate", None):
            return True
        if isinstance(cause, psycopg.errors.AdminShutdown | psycopg.errors.ConnectionException):
            return True
        if isinstance(cause, pymysql.err.InterfaceError):
            return True
        if isinstance(cause, pymysql.err.OperationalError):
            errno = cause.args[0] if cause.args else 0
            if isinstance(errno, int) and errno >= _FIRST_SERVER_ONLY_CLIENT_ERRNO:
                return True
        if isinstance(cause, OSError | EOFError):
            return True
        cause = cause.__cause__
    return False


def finish_prepared(
    branch: PreparedBranch, *, commit: bool, patience: float = _PATIENCE
) -> bool | None:
    """COMMIT or ROLLBACK PREPARED the branch, retrying; reconnects if its session is lost.

    True: finished as asked. False: the database had ended it the other way (a heuristic
    outcome). None: still prepared after `patience` seconds; the coordinator must finish it.
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
            log.error(
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
