"""The branch operations of each database: the statements of two-phase commit, in one place.

Both the client's branch stubs and the coordinator's recovery run these, never a second copy
(docs/design.md §5). Every function takes a driver session that the connection pool opened in
driver-level autocommit, so each transaction here is begun and ended by explicit statements.

What the databases answer, measured on PostgreSQL 15 and MariaDB 10.11
(docs/facts/db-2pc-semantics-pg15-mariadb10.11.txt), and what it means here:
- "Unknown xid" (PG 42704, MariaDB 1397) is ambiguous: finished, never prepared, or (MariaDB)
  prepared and still attached to a live session. Phase 2 reports it as `NOT_FOUND`, and the
  caller decides with `is_prepared()`, never from the error alone.
- PG answers `PREPARE TRANSACTION` / `COMMIT` on a failed transaction with the command tag
  ROLLBACK and no error: the tag is checked, or a rolled-back branch would count as a YES vote.
- MariaDB refuses `XA START` after any transactional statement (1400): sessions are clean
  (autocommit, idle) when a branch starts.
- A prepared read-only MariaDB branch is rolled back when its session closes (1402 or 1397
  later, facts MY-3 and MY-10), which would look like a heuristic outcome; so a branch that
  wrote nothing is never prepared (`wrote_nothing`, XA's "read-only vote").
  PostgreSQL says exactly whether a transaction wrote (`txid_current_if_assigned()` is NULL
  until it does); MariaDB's INNODB_TRX is a cache refreshed at most every 0.1 s (measured),
  so its session's Handler_write/update/delete counters are compared with their values at
  XA START instead (exact for InnoDB writes, stored functions and sequences; measured).
  Reading them costs ~0.2 ms of server time, so they are read only for a branch whose first
  statement was a read.
- Whatever `begin` changes in a MariaDB session (lock wait and idle timeouts) is saved in
  user variables by the same statement and put back by `restore_session` when the session is
  next taken for anything but a branch (`Connection.acquire`); a branch after a branch with
  the same timeouts sends no SET at all (two round trips fewer per transaction). PostgreSQL's
  lock timeout is `SET LOCAL`, gone with the transaction.
"""

from __future__ import annotations

import contextlib
import enum
import weakref
from typing import Any, NoReturn, Protocol

import psycopg
import pymysql
from psycopg import sql
from psycopg.pq import TransactionStatus
from pymysql.constants import SERVER_STATUS

from .._errors import TwoPhaseNotSupported, is_connection_failure, translate_driver_errors
from .xid import FORMAT_ID, Xid

__all__ = ["BranchEscaped", "BranchOps", "Finish", "VoteNo", "local_ops", "require_two_phase"]

# MariaDB error numbers (XA_RB*, XAER_*) that phase 2 must tell apart.
_MY_XAER_NOTA = 1397  # unknown xid -- or prepared and attached to a live session
_MY_XA_RBROLLBACK = 1402  # the branch was rolled back (e.g. read-only, its session closed)
_PG_UNDEFINED_OBJECT = "42704"
_PG_BUSY = "55000"  # another session is finishing this gid right now


class VoteNo(Exception):
    """A branch could not be prepared; its transaction is rolled back (or must be)."""


class BranchEscaped(VoteNo):
    """The branch's session left its transaction before it ended (a COMMIT or ROLLBACK sent
    past the statement guard, on the driver session): what ran on it after that committed on
    its own, outside the transaction. A heuristic outcome, not a plain NO vote."""


class Finish(enum.Enum):
    """How a phase-2 step on one branch ended."""

    DONE = "done"
    #: The database does not know the xid. Finished only if it is no longer listed prepared.
    NOT_FOUND = "not found"
    #: MariaDB: the branch was rolled back by the server (XA_RBROLLBACK).
    ROLLED_BACK = "rolled back"
    #: PostgreSQL: another session is finishing the same gid at this moment; retry.
    BUSY = "busy"


class BranchOps(Protocol):
    """The two-phase statements of one dialect. `xid` is None for a plain local transaction."""

    dialect: str

    def begin(
        self,
        session: Any,
        xid: Xid | None,
        lock_timeout_ms: int | None,
        *,
        count_writes: bool = False,
    ) -> None:
        """Start the branch; bound its lock waits (and, MySQL, its idle time) by the timeout.

        `count_writes`: remember what the session has written so far, so that
        `wrote_nothing` can tell (MySQL only; PostgreSQL always can).
        """

    def set_lock_timeout(self, session: Any, lock_timeout_ms: int) -> None:
        """Shorten the lock wait bound of a running branch (the deadline moved closer)."""

    def session_id(self, session: Any) -> int: ...

    def wrote_nothing(self, session: Any) -> bool:
        """Whether the branch has written nothing so far (asked of the server; the branch is
        left as it is). `VoteNo` if it is no longer a transaction, or its transaction failed."""
        ...

    def prepare(self, session: Any, xid: Xid) -> int | None:
        """PREPARE; returns the database's id of the transaction (PostgreSQL xid8) or None.

        `VoteNo` if it cannot be prepared (rolled back) or is no longer the transaction the
        branch began (ended inside the block)."""
        ...

    def commit_one_phase(self, session: Any, xid: Xid | None) -> None: ...
    def rollback_unprepared(self, session: Any, xid: Xid | None) -> None: ...
    def commit_prepared(self, session: Any, xid: Xid) -> Finish: ...
    def rollback_prepared(self, session: Any, xid: Xid) -> Finish: ...
    def is_prepared(self, session: Any, xid: Xid) -> bool: ...
    def recover(self, session: Any) -> list[Xid]: ...

    def ended_as(self, session: Any, transaction_id: int | None) -> str | None:
        """How a transaction that is no longer prepared ended: 'committed', 'aborted',
        'in progress', or None when the database cannot tell (MySQL; unknown id)."""
        ...

    def restore_session(self, session: Any) -> None:
        """Undo what `begin` changed in the session's settings (before a use that is not a
        branch); no I/O for a session `begin` never changed."""


def _vote_no_unless_lost(exc: Exception, step: str) -> NoReturn:
    """A server's error at commit means rolled back; a lost session means nobody knows."""
    if is_connection_failure(exc):
        with translate_driver_errors():
            raise exc
    raise VoteNo(f"{step} failed: {exc}") from exc


# How long past its deadline a branch session may sit idle before the server ends it (s). By
# then the coordinator answers ABORTED to a late Commit, and a prepared branch only detaches.
_IDLE_MARGIN_S = 5


def _require_transaction(state: str, step: str) -> None:
    """`state`: "in" (inside the branch's transaction), "lost" (the session failed: the server
    rolled the transaction back) or "out" (open, but outside any transaction: it escaped)."""
    if state == "lost":
        raise VoteNo(f"{step}: the session was lost; the server rolled its transaction back")
    if state == "out":
        raise BranchEscaped(
            f"{step}: the session is no longer inside the branch's transaction (it was ended "
            "inside the block, past the statement guard); what ran on it after that was "
            "committed on its own"
        )


class _PostgresOps:
    dialect = "postgresql"

    def begin(
        self,
        session: psycopg.Connection,
        xid: Xid | None,
        lock_timeout_ms: int | None,
        *,
        count_writes: bool = False,
    ) -> None:
        # The gid is only needed at PREPARE, so a PG branch can start before the coordinator
        # is asked for a gtrid (a one-database block never needs it).
        statement = "BEGIN"
        if lock_timeout_ms is not None:
            # A lock wait across two databases is a deadlock neither engine sees: bound it.
            # One round trip for both statements.
            statement += "; " + _pg_lock_timeout(lock_timeout_ms)
        with translate_driver_errors():
            session.execute(statement)

    def set_lock_timeout(self, session: psycopg.Connection, lock_timeout_ms: int) -> None:
        with translate_driver_errors():
            session.execute(_pg_lock_timeout(lock_timeout_ms))

    def session_id(self, session: psycopg.Connection) -> int:
        return 0

    def _status(self, session: psycopg.Connection, step: str) -> TransactionStatus:
        status = session.info.transaction_status
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            return status
        _require_transaction("out" if status == TransactionStatus.IDLE else "lost", step)
        raise AssertionError("unreachable")

    def wrote_nothing(self, session: psycopg.Connection) -> bool:
        if self._status(session, "read-only check") is TransactionStatus.INERROR:
            raise VoteNo("a statement of the branch failed: PostgreSQL rolled it back")
        try:
            (txid,) = session.execute("SELECT txid_current_if_assigned()").fetchone()
        except psycopg.Error as exc:
            _vote_no_unless_lost(exc, "read-only check")
        return txid is None

    def prepare(self, session: psycopg.Connection, xid: Xid) -> int | None:
        if self._status(session, "PREPARE TRANSACTION") is TransactionStatus.INERROR:
            raise VoteNo("a statement of the branch failed: PostgreSQL rolled it back")
        # One round trip: the transaction id (for pg_xact_status once the gid is gone),
        # then PREPARE.
        statement = sql.SQL("SELECT txid_current_if_assigned(); PREPARE TRANSACTION {}").format(
            sql.Literal(xid.pg_gid())
        )
        try:
            cur = session.execute(statement)
            (txid,) = cur.fetchone()
            cur.nextset()
        except psycopg.Error as exc:
            if is_connection_failure(exc):
                raise VoteNo(
                    f"the session was lost at PREPARE TRANSACTION ({type(exc).__name__}); the "
                    "branch is rolled back (it may have been prepared first: it is looked for)"
                ) from exc
            raise VoteNo(f"PREPARE TRANSACTION failed: {exc}") from exc
        if cur.statusmessage != "PREPARE TRANSACTION":
            # Tag ROLLBACK: a statement had failed earlier, PostgreSQL rolled the branch back.
            raise VoteNo(f"PREPARE TRANSACTION answered {cur.statusmessage!r}: branch rolled back")
        return None if txid is None else int(txid)

    def commit_one_phase(self, session: psycopg.Connection, xid: Xid | None) -> None:
        self._status(session, "COMMIT")
        try:
            cur = session.execute("COMMIT")
        except psycopg.Error as exc:
            _vote_no_unless_lost(exc, "COMMIT")
        if cur.statusmessage != "COMMIT":
            raise VoteNo(f"COMMIT answered {cur.statusmessage!r}: the transaction was rolled back")

    def rollback_unprepared(self, session: psycopg.Connection, xid: Xid | None) -> None:
        with translate_driver_errors():
            session.execute("ROLLBACK")

    def commit_prepared(self, session: psycopg.Connection, xid: Xid) -> Finish:
        return self._finish(session, "COMMIT PREPARED", xid)

    def rollback_prepared(self, session: psycopg.Connection, xid: Xid) -> Finish:
        return self._finish(session, "ROLLBACK PREPARED", xid)

    def _finish(self, session: psycopg.Connection, verb: str, xid: Xid) -> Finish:
        statement = sql.SQL(verb + " {}").format(sql.Literal(xid.pg_gid()))
        try:
            session.execute(statement)
        except psycopg.Error as exc:
            code = exc.sqlstate
            if code == _PG_UNDEFINED_OBJECT:
                return Finish.NOT_FOUND
            if code == _PG_BUSY:
                return Finish.BUSY
            with translate_driver_errors():
                raise
        return Finish.DONE

    def is_prepared(self, session: psycopg.Connection, xid: Xid) -> bool:
        with translate_driver_errors():
            cur = session.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (xid.pg_gid(),))
            return cur.fetchone() is not None

    def recover(self, session: psycopg.Connection) -> list[Xid]:
        # pg_prepared_xacts is cluster-wide, but COMMIT PREPARED must be sent to the
        # database that prepared, so a resource only answers for its own database.
        with translate_driver_errors():
            cur = session.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
                " ORDER BY prepared"
            )
            gids = [row[0] for row in cur.fetchall()]
        return [xid for xid in map(Xid.from_pg_gid, gids) if xid is not None]

    def ended_as(self, session: psycopg.Connection, transaction_id: int | None) -> str | None:
        # COMMIT/ROLLBACK PREPARED answer 42704 for a gid that is gone either way; only the
        # commit log (pg_xact_status) knows which, until it is truncated (then NULL).
        if not transaction_id:
            return None
        with translate_driver_errors():
            row = session.execute(
                "SELECT pg_xact_status(%s::text::xid8)", (str(int(transaction_id)),)
            ).fetchone()
        return row[0] if row else None

    def restore_session(self, session: psycopg.Connection) -> None:
        pass  # SET LOCAL ended with the transaction


def _pg_lock_timeout(lock_timeout_ms: int) -> str:
    # Ints we format ourselves: nothing from outside reaches the text. The idle timeout ends
    # the session of a client that froze inside the transaction (it would keep its row locks
    # for good), 5 s past the deadline, like MySQL's wait_timeout; SET LOCAL ends with the
    # transaction, and a prepared transaction no longer belongs to a session.
    ms = max(1, int(lock_timeout_ms))
    return (
        f"SET LOCAL lock_timeout = '{ms}ms';"
        f" SET LOCAL idle_in_transaction_session_timeout = '{ms + _IDLE_MARGIN_S * 1000}ms'"
    )


# What the session has written so far: the sum of its Handler_write/update/delete counters.
_MY_WRITES = (
    "(SELECT SUM(VARIABLE_VALUE) FROM information_schema.SESSION_STATUS"
    " WHERE VARIABLE_NAME IN ('HANDLER_WRITE', 'HANDLER_UPDATE', 'HANDLER_DELETE'))"
)
# Saves the session's own values first: SET assigns left to right.
_MY_SAVE = (
    "@twostep_lock_wait = @@session.innodb_lock_wait_timeout,"
    " @twostep_wait = @@session.wait_timeout"
)
_MY_TIMEOUTS = "SESSION innodb_lock_wait_timeout = %s, wait_timeout = %s"
_MY_RESTORE = (
    "SESSION innodb_lock_wait_timeout = @twostep_lock_wait, wait_timeout = @twostep_wait,"
    " @twostep_lock_wait = NULL, @twostep_wait = NULL, @twostep_writes = NULL"
)


def _seconds(lock_timeout_ms: int) -> int:
    return max(1, -(-int(lock_timeout_ms) // 1000))  # whole seconds, at least 1


class _MySQLOps:
    dialect = "mysql"

    def __init__(self) -> None:
        # Sessions whose timeouts `begin` changed (their own values wait in user variables):
        # the whole seconds it set. Kept while pooled, so that the next branch on the session
        # needs no SET; `restore_session` puts them back before any other use.
        self._timeouts: weakref.WeakKeyDictionary[pymysql.Connection, int] = (
            weakref.WeakKeyDictionary()
        )

    def begin(
        self,
        session: pymysql.Connection,
        xid: Xid | None,
        lock_timeout_ms: int | None,
        *,
        count_writes: bool = False,
    ) -> None:
        # wait_timeout makes MariaDB end the session of a client that froze with the branch
        # attached (XAER_NOTA to everyone else) soon after the deadline, detaching a prepared
        # branch so recovery can finish it. One SET at most, none when nothing changes.
        assignments: list[str] = []
        params: tuple[int, ...] = ()
        set_before = self._timeouts.get(session)
        seconds = None if lock_timeout_ms is None else _seconds(lock_timeout_ms)
        if seconds is None and set_before is not None:
            assignments.append(_MY_RESTORE)
        elif seconds is not None and seconds != set_before:
            if set_before is None:
                assignments.append(_MY_SAVE)
            assignments.append(_MY_TIMEOUTS)
            params = (seconds, seconds + _IDLE_MARGIN_S)
        if count_writes:
            assignments.append(f"@twostep_writes = {_MY_WRITES}")
        with translate_driver_errors(), session.cursor() as cur:
            if assignments:
                cur.execute("SET " + ", ".join(assignments), params or None)
                if seconds is None:
                    self._timeouts.pop(session, None)
                else:
                    self._timeouts[session] = seconds
            cur.execute(f"XA START {xid.mysql_literal()}" if xid else "START TRANSACTION")

    def set_lock_timeout(self, session: pymysql.Connection, lock_timeout_ms: int) -> None:
        seconds = _seconds(lock_timeout_ms)
        if self._timeouts.get(session) == seconds:
            return
        statement = "SET " + (_MY_SAVE + ", " if session not in self._timeouts else "")
        with translate_driver_errors(), session.cursor() as cur:
            cur.execute(statement + _MY_TIMEOUTS, (seconds, seconds + _IDLE_MARGIN_S))
        self._timeouts[session] = seconds

    def session_id(self, session: pymysql.Connection) -> int:
        return int(session.thread_id())

    def _require(self, session: pymysql.Connection, step: str) -> None:
        # server_status comes with every reply: IN_TRANS is set from XA START until the
        # branch ends (measured on MariaDB 10.11), so this costs no round trip.
        if not session.open:
            _require_transaction("lost", step)
        if not session.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            _require_transaction("out", step)

    def wrote_nothing(self, session: pymysql.Connection) -> bool:
        self._require(session, "read-only check")
        try:
            with session.cursor() as cur:
                cur.execute(f"SELECT {_MY_WRITES} - @twostep_writes")
                (written,) = cur.fetchone()
        except pymysql.MySQLError as exc:
            _vote_no_unless_lost(exc, "read-only check")
        return written is not None and written == 0  # None: not counted since XA START

    def prepare(self, session: pymysql.Connection, xid: Xid) -> int | None:
        self._require(session, "XA PREPARE")
        try:
            with session.cursor() as cur:
                cur.execute(f"XA END {xid.mysql_literal()}")
                cur.execute(f"XA PREPARE {xid.mysql_literal()}")
        except pymysql.MySQLError as exc:
            if is_connection_failure(exc):
                raise VoteNo(
                    f"the session was lost at XA PREPARE ({type(exc).__name__}); the branch is "
                    "rolled back (it may have been prepared first: it is looked for)"
                ) from exc
            raise VoteNo(f"XA PREPARE failed: {exc}") from exc
        return None

    def commit_one_phase(self, session: pymysql.Connection, xid: Xid | None) -> None:
        self._require(session, "one-phase commit")
        try:
            with session.cursor() as cur:
                if xid is None:
                    cur.execute("COMMIT")
                    return
                cur.execute(f"XA END {xid.mysql_literal()}")
                cur.execute(f"XA COMMIT {xid.mysql_literal()} ONE PHASE")
        except pymysql.MySQLError as exc:
            _vote_no_unless_lost(exc, "one-phase commit")

    def rollback_unprepared(self, session: pymysql.Connection, xid: Xid | None) -> None:
        with translate_driver_errors(), session.cursor() as cur:
            if xid is None:
                cur.execute("ROLLBACK")
                return
            # Already ended, or rollback-only after a deadlock: XA ROLLBACK works either way.
            with contextlib.suppress(pymysql.MySQLError):
                cur.execute(f"XA END {xid.mysql_literal()}")
            cur.execute(f"XA ROLLBACK {xid.mysql_literal()}")

    def commit_prepared(self, session: pymysql.Connection, xid: Xid) -> Finish:
        return self._finish(session, "XA COMMIT", xid)

    def rollback_prepared(self, session: pymysql.Connection, xid: Xid) -> Finish:
        return self._finish(session, "XA ROLLBACK", xid)

    def _finish(self, session: pymysql.Connection, verb: str, xid: Xid) -> Finish:
        try:
            with session.cursor() as cur:
                cur.execute(f"{verb} {xid.mysql_literal()}")
        except pymysql.MySQLError as exc:
            errno = exc.args[0] if exc.args else None
            if errno == _MY_XAER_NOTA:
                return Finish.NOT_FOUND
            if errno == _MY_XA_RBROLLBACK:
                return Finish.ROLLED_BACK
            with translate_driver_errors():
                raise
        return Finish.DONE

    def is_prepared(self, session: pymysql.Connection, xid: Xid) -> bool:
        return xid in self.recover(session)

    def recover(self, session: pymysql.Connection) -> list[Xid]:
        with translate_driver_errors(), session.cursor() as cur:
            cur.execute("XA RECOVER")
            rows = cur.fetchall()
        found = (Xid.from_mysql_recover(*row) for row in rows if row[0] == FORMAT_ID)
        return [xid for xid in found if xid is not None]

    def ended_as(self, session: pymysql.Connection, transaction_id: int | None) -> str | None:
        return None  # XA COMMIT and XA ROLLBACK of a finished xid both answer XAER_NOTA

    def restore_session(self, session: pymysql.Connection) -> None:
        if session not in self._timeouts:
            return
        with translate_driver_errors(), session.cursor() as cur:
            cur.execute("SET " + _MY_RESTORE)
        self._timeouts.pop(session, None)


class _SQLiteOps:
    """Local transactions only: SQLite has no PREPARE, so it never joins two-phase commit."""

    dialect = "sqlite"

    def begin(
        self,
        session: Any,
        xid: Xid | None,
        lock_timeout_ms: int | None,
        *,
        count_writes: bool = False,
    ) -> None:
        with translate_driver_errors():
            session.execute("BEGIN")

    def commit_one_phase(self, session: Any, xid: Xid | None) -> None:
        with translate_driver_errors():
            session.execute("COMMIT")

    def rollback_unprepared(self, session: Any, xid: Xid | None) -> None:
        with translate_driver_errors():
            session.execute("ROLLBACK")

    def restore_session(self, session: Any) -> None:
        pass


_OPS: dict[str, BranchOps] = {"postgresql": _PostgresOps(), "mysql": _MySQLOps()}


def require_two_phase(dialect: str, *, connection: str, origin: str | None = None) -> BranchOps:
    """The two-phase operations of a dialect; SQLite (or anything else) is refused by name."""
    try:
        return _OPS[dialect]
    except KeyError:
        who = f"connection {connection!r}"
        if origin:
            who = f"model {origin} on {who}"
        raise TwoPhaseNotSupported(
            f"{who} uses {dialect}, which cannot take part in two-phase commit: "
            "it cannot be written atomically with other databases, so twostep refuses it "
            "here and nothing was written to it"
        ) from None


def local_ops(dialect: str) -> BranchOps | _SQLiteOps:
    """Operations for a transaction on one connection, SQLite included."""
    return _OPS.get(dialect) or _SQLiteOps()
