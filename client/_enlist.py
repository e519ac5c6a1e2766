"""Sessions the application opened itself, run as branches of a global transaction.

`GlobalTransaction.enlist()` takes a psycopg (3) or PyMySQL connection; the SQLAlchemy
integration (`twostep.client.sqlalchemy`) takes the driver connection under a SQLAlchemy
`Connection`. Either way the session becomes one branch, run by the same branch operations as
twostep's own (`tpc.operations`: begin with the deadline's lock timeouts, read-only vote,
PREPARE, phase 2), and what the branch changed is put back when it ends (docs/design.md §6,
"Enlisted sessions"):
- the session must be idle (no transaction open): MariaDB refuses `XA START` after any
  transactional statement, and a PostgreSQL transaction begun before the block would carry
  work the coordinator never heard of;
- driver-level autocommit is switched on for the branch (the operations send BEGIN / XA START
  and the end themselves, as on twostep's pooled sessions) and back to what it was after;
- the session's own `commit()` and `rollback()` must not end the branch alone: PyMySQL's are
  refused by the server inside an XA branch (1399, XAER_RMFAIL); psycopg's are refused by
  psycopg itself inside a `Connection.transaction()` block, so the branch holds one (a
  SAVEPOINT, released when the block ends and before PREPARE);
- a branch session is never pooled, and no other session of its database is opened: a branch
  whose session is lost in phase 2 is left to the coordinator, which knows the resource.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql
from psycopg.pq import TransactionStatus
from pymysql.constants import SERVER_STATUS

from ._errors import TwostepError, translate_driver_errors
from .tpc.operations import BranchOps

__all__ = ["Enlisted", "dialect_of"]

SUPPORTED = "a psycopg (3) Connection or a PyMySQL Connection"


def dialect_of(session: object) -> str:
    """The dialect name of a driver connection ('postgresql', 'mysql', 'sqlite'); `TypeError`
    for anything else (named)."""
    if isinstance(session, psycopg.Connection):
        return "postgresql"
    if isinstance(session, pymysql.connections.Connection):
        return "mysql"
    if isinstance(session, sqlite3.Connection):
        return "sqlite"
    raise TypeError(f"global_transaction() can enlist {SUPPORTED}, not {type(session).__name__}")


class Enlisted:
    """The home of an enlisted session's branch, in the place of a `Connection` (`Branch.
    connection`): `release` gives the session back to its owner as it was found, `acquire`
    opens nothing (phase 2 of a branch whose session was lost is the coordinator's).

    `guard`: hold a psycopg transaction block while the branch runs, so that the owner's
    `commit()` / `rollback()` are refused (not for SQLAlchemy, which refuses them itself).
    `discard`: how a session in an unknown state is dropped (default: closed).
    """

    def __init__(
        self,
        name: str,
        dialect: str,
        ops: BranchOps,
        *,
        guard: bool = True,
        discard: Callable[[Any], None] | None = None,
    ):
        self.name = name
        self.dialect = dialect
        self.ops = ops
        self._use_guard = guard
        self._discard = discard or _close
        self._autocommit: bool | None = None
        self._guard: psycopg.Transaction | None = None

    def take(self, session: Any, begin: Callable[[], None]) -> None:
        """Check that `session` is idle, switch autocommit on and run `begin` (BEGIN or XA
        START); on failure the session is rolled back and left as it was. Raises
        `TwostepError` naming the resource for a session that is closed or in a transaction
        (nothing sent), `DatabaseError` if a statement fails."""
        if self.dialect == "postgresql":
            open_ = not session.closed
            idle = open_ and session.info.transaction_status == TransactionStatus.IDLE
            autocommit = session.autocommit
        else:
            open_ = session.open
            idle = open_ and not session.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
            autocommit = session.get_autocommit()
        if not idle:
            state = "is in a transaction" if open_ else "is closed"
            raise TwostepError(
                f"the session enlisted as {self.name!r} {state}: commit or roll back first (a "
                "branch must begin with the global transaction); nothing was sent"
            )
        self._autocommit = autocommit
        with translate_driver_errors(self.name):
            self._set_autocommit(session, True)
        try:
            begin()
            if self._use_guard and self.dialect == "postgresql":
                with translate_driver_errors(self.name):
                    self._guard = session.transaction()
                    self._guard.__enter__()  # a SAVEPOINT: refuses commit() and rollback()
        except BaseException:
            with contextlib.suppress(Exception):
                self.ops.rollback_unprepared(session, None)
            with contextlib.suppress(Exception):
                self.release(session)
            raise

    def close_statements(self, session: Any) -> None:
        """The block ended: drop the psycopg transaction block (RELEASE the SAVEPOINT) so that
        the branch can be prepared. A failed transaction stays failed (RELEASE fails too) and
        votes NO, as any failed branch; a lost session is left to the end of the branch."""
        guard, self._guard = self._guard, None
        if guard is not None:
            with contextlib.suppress(psycopg.Error):
                guard.__exit__(None, None, None)

    def acquire(self) -> Any:
        raise TwostepError(
            f"the session enlisted as {self.name!r} was lost; the application's own sessions "
            "are not reopened: the coordinator finishes its branch"
        )

    def release(self, session: Any, *, discard: bool = False) -> None:
        """The branch ended (or could not begin): give the session back with its own
        settings; `discard`: its state is unknown (lost, or a prepared branch it must let go
        of), so it is dropped instead."""
        self._guard = None
        if discard:
            self._discard(session)
            return
        self.ops.restore_session(session)
        if self._autocommit is not None:
            with translate_driver_errors(self.name):
                self._set_autocommit(session, self._autocommit)

    def _set_autocommit(self, session: Any, value: bool) -> None:
        if self.dialect == "postgresql":
            session.autocommit = value
        else:
            session.autocommit(value)  # sends SET autocommit only if it changes


def _close(session: Any) -> None:
    with contextlib.suppress(Exception):
        session.close()
