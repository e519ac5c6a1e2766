"""The branch operations of each database: the statements of two-phase commit, in one place.

Both the client's branch stubs and the coordinator's recovery run these, never a second copy
(DESIGN.md §1). Every function takes a driver session that the connection pool opened in
driver-level autocommit, so each transaction here is begun and ended by explicit statements.

What the databases answer, measured on PostgreSQL 15 and MariaDB 10.11
(shared/facts/db-2pc-semantics-pg15-mariadb10.11.txt), and what it means here:
- "Unknown xid" (PG 42704, MariaDB 1397) is ambiguous: finished, never prepared, or (MariaDB)
  prepared and still attached to a live session. Phase 2 reports it as `NOT_FOUND`, and the
  caller decides with `is_prepared()`, never from the error alone.
- PG answers `PREPARE TRANSACTION` / `COMMIT` on a failed transaction with the command tag
  ROLLBACK and no error: the tag is checked, or a rolled-back branch would count as a YES vote.
- MariaDB refuses `XA START` after any transactional statement (1400): sessions are clean
  (autocommit, idle) when a branch starts.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any, NoReturn, Protocol

import psycopg
import pymysql
from psycopg import sql

from ._errors import TwoPhaseNotSupported, is_connection_failure, translate_driver_errors
from ._xid import FORMAT_ID, Xid

__all__ = ["BranchOps", "Finish", "VoteNo", "local_ops", "require_two_phase"]

# MariaDB error numbers (XA_RB*, XAER_*) that phase 2 must tell apart.
_MY_XAER_NOTA = 1397  # unknown xid -- or prepared and attached to a live session
_MY_XA_RBROLLBACK = 1402  # the branch was rolled back (e.g. read-only, its session closed)
_PG_UNDEFINED_OBJECT = "42704"
_PG_BUSY = "55000"  # another session is finishing this gid right now


class VoteNo(Exception):
    """A branch could not be prepared; its transaction is rolled back (or must be)."""


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

    def begin(self, session: Any, xid: Xid | None, lock_timeout_ms: int | None) -> None: ...
    def session_id(self, session: Any) -> int: ...
    def prepare(self, session: Any, xid: Xid) -> None: ...
    def commit_one_phase(self, session: Any, xid: Xid | None) -> None: ...
    def rollback_unprepared(self, session: Any, xid: Xid | None) -> None: ...
    def commit_prepared(self, session: Any, xid: Xid) -> Finish: ...
    def rollback_prepared(self, session: Any, xid: Xid) -> Finish: ...
    def is_prepared(self, session: Any, xid: Xid) -> bool: ...
    def recover(self, session: Any) -> list[Xid]: ...


def _vote_no_unless_lost(exc: Exception, step: str) -> NoReturn:
    """A server's error at commit means rolled back; a lost session means nobody knows."""
    if is_connection_failure(exc):
        with translate_driver_errors():
            raise exc
    raise VoteNo(f"{step} failed: {exc}") from exc


class _PostgresOps:
    dialect = "postgresql"

    def begin(
        self, session: psycopg.Connection, xid: Xid | None, lock_timeout_ms: int | None
    ) -> None:
        # The gid is only needed at PREPARE, so a PG branch can start before the coordinator
        # is asked for a gtrid (a one-database block never needs it).
        statement = "BEGIN"
        if lock_timeout_ms is not None:
            # A lock wait across two databases is a deadlock neither engine sees: bound it.
            # One round trip for both statements; the value is an int we format ourselves.
            statement += f"; SET LOCAL lock_timeout = '{max(1, int(lock_timeout_ms))}ms'"
        with translate_driver_errors():
            session.execute(statement)

    def session_id(self, session: psycopg.Connection) -> int:
        return 0

    def prepare(self, session: psycopg.Connection, xid: Xid) -> None:
        try:
            cur = session.execute(
                sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(xid.pg_gid()))
            )
        except psycopg.Error as exc:
            raise VoteNo(f"PREPARE TRANSACTION failed: {exc}") from exc
        if cur.statusmessage != "PREPARE TRANSACTION":
            # Tag ROLLBACK: a statement had failed earlier, PostgreSQL rolled the branch back.
            raise VoteNo(f"PREPARE TRANSACTION answered {cur.statusmessage!r}: branch rolled back")

    def commit_one_phase(self, session: psycopg.Connection, xid: Xid | None) -> None:
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


# How long past its deadline a MySQL branch session may sit idle before the server ends it.
# By then the coordinator answers ABORTED to a late Commit, and a prepared branch only detaches.
_IDLE_MARGIN_S = 5


class _MySQLOps:
    dialect = "mysql"

    def begin(
        self, session: pymysql.Connection, xid: Xid | None, lock_timeout_ms: int | None
    ) -> None:
        # Whole seconds, at least 1; None: the server's defaults. Set for every branch: a pooled
        # session keeps whatever its previous user set. wait_timeout makes MariaDB end the
        # session of a client that froze with the branch attached (XAER_NOTA to everyone else)
        # soon after the deadline, detaching a prepared branch so recovery can finish it.
        seconds = None if lock_timeout_ms is None else max(1, -(-int(lock_timeout_ms) // 1000))
        with translate_driver_errors(), session.cursor() as cur:
            if seconds is None:
                cur.execute(
                    "SET SESSION innodb_lock_wait_timeout = DEFAULT, wait_timeout = DEFAULT"
                )
            else:
                cur.execute(
                    "SET SESSION innodb_lock_wait_timeout = %s, wait_timeout = %s",
                    (seconds, seconds + _IDLE_MARGIN_S),
                )
            cur.execute(f"XA START {xid.mysql_literal()}" if xid else "START TRANSACTION")

    def session_id(self, session: pymysql.Connection) -> int:
        return int(session.thread_id())

    def prepare(self, session: pymysql.Connection, xid: Xid) -> None:
        try:
            with session.cursor() as cur:
                cur.execute(f"XA END {xid.mysql_literal()}")
                cur.execute(f"XA PREPARE {xid.mysql_literal()}")
        except pymysql.MySQLError as exc:
            raise VoteNo(f"XA PREPARE failed: {exc}") from exc

    def commit_one_phase(self, session: pymysql.Connection, xid: Xid | None) -> None:
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


class _SQLiteOps:
    """Local transactions only: SQLite has no PREPARE, so it never joins two-phase commit."""

    dialect = "sqlite"

    def begin(self, session: Any, xid: Xid | None, lock_timeout_ms: int | None) -> None:
        with translate_driver_errors():
            session.execute("BEGIN")

    def commit_one_phase(self, session: Any, xid: Xid | None) -> None:
        with translate_driver_errors():
            session.execute("COMMIT")

    def rollback_unprepared(self, session: Any, xid: Xid | None) -> None:
        with translate_driver_errors():
            session.execute("ROLLBACK")


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
