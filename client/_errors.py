"""The one error tree of twostep, and the one place where driver errors become it.

Users catch what they mean (`TransactionAborted`, `OutcomeUnknown`) without knowing whether
psycopg, PyMySQL or grpc sat underneath. Every message should tell an operator what happened
to the data: committed, rolled back, or still in doubt (and which gtrid to look up).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import psycopg
import pymysql

__all__ = [
    "ConfigurationError",
    "CoordinatorUnavailable",
    "DatabaseError",
    "HeuristicOutcome",
    "InvalidIdentifier",
    "LockNotAvailable",
    "OutcomeUnknown",
    "PhaseTwoIncomplete",
    "PoolTimeout",
    "StaleObjectError",
    "StatementRefused",
    "TransactionAborted",
    "TransactionEnded",
    "TransactionError",
    "TwoPhaseNotSupported",
    "TwostepError",
    "UnknownColumn",
    "UnsupportedValue",
    "is_connection_failure",
    "translate_driver_errors",
]

# NOWAIT and an expired lock wait answer the same (measured, PG 15 and MariaDB 10.11).
_PG_LOCK_NOT_AVAILABLE = "55P03"
_MY_LOCK_WAIT_TIMEOUT = "1205"
_FIRST_CLIENT_ERRNO = 2000  # MySQL client-side errors (CR_*: lost connection...) start here
# Server errors after which MySQL/MariaDB closes the session: shutdown, packet too large
# (max_allowed_packet), network read/write errors, connection killed.
_MY_SESSION_ENDED = frozenset({1053, 1153, 1158, 1159, 1160, 1161, 1927})
# PostgreSQL SQLSTATEs (besides class 08, connection exception) that end the session:
# admin/crash shutdown, cannot connect now, idle-in-transaction and idle session timeouts.
_PG_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "25P03", "57P05"})


class TwostepError(Exception):
    """Root of every error twostep raises on purpose."""


# -- usage and input ---------------------------------------------------------------------------


class ConfigurationError(TwostepError):
    """A connection or model is configured wrongly (unknown name, bad driver, missing field)."""


class InvalidIdentifier(TwostepError, ValueError):
    """A gtrid, branch qualifier or resource name is malformed; no SQL was sent with it."""


class TwoPhaseNotSupported(TwostepError):
    """A database that cannot take part in two-phase commit (SQLite) was used where it must."""


class StatementRefused(TwostepError):
    """A statement would end or leave the transaction it runs in (COMMIT, ROLLBACK, BEGIN,
    XA ..., SET autocommit ...); it was not sent, and the transaction is unchanged."""


# -- models ------------------------------------------------------------------------------------


class UnsupportedValue(TwostepError, ValueError):
    """A model value its column would not give back unchanged (README "Types"); nothing was
    sent. Also raised for a stored value that cannot be read as its column's type."""

    def __init__(self, message: str, *, model: str, column: str):
        super().__init__(message)
        self.model = model
        self.column = column


class UnknownColumn(TwostepError, AttributeError, TypeError):
    """A field name that is not a column of the model's table (nor a field alias); nothing
    was sent. An AttributeError where an attribute is read or assigned, and a TypeError
    where a call is given such a field (as Python's own for an unexpected keyword): it is
    both, so either `except` catches it."""


class StaleObjectError(TwostepError):
    """`save()` or `delete()` of a row whose `lock_version` changed since it was loaded (or
    that was deleted meanwhile): someone else wrote it, and nothing was written now."""

    def __init__(self, message: str, *, model: str, key: tuple[object, ...]):
        super().__init__(message)
        self.model = model
        self.key = key


# -- databases ---------------------------------------------------------------------------------


class DatabaseError(TwostepError):
    """A statement failed on a database; the driver's exception is `__cause__`."""

    def __init__(self, message: str, *, connection: str | None = None, code: str | None = None):
        super().__init__(message)
        self.connection = connection
        #: SQLSTATE on PostgreSQL, the server's error number on MySQL/MariaDB.
        self.code = code


class LockNotAvailable(DatabaseError):
    """A row lock could not be taken: `for_update(nowait=True)` found it held, or the lock
    wait ran past its limit (the transaction's deadline). The statement did nothing."""


class PoolTimeout(TwostepError):
    """Every session a connection may open (`pool_size + max_overflow`) stayed in use for
    `pool_timeout` seconds: no session was had, so the statement was not sent."""

    def __init__(self, message: str, *, connection: str, cap: int, timeout: float):
        super().__init__(message)
        self.connection = connection
        #: How many sessions the connection may have open at once.
        self.cap = cap
        #: How long the caller waited (seconds).
        self.timeout = timeout


# -- coordinator -------------------------------------------------------------------------------


class CoordinatorUnavailable(TwostepError):
    """The coordinator could not be reached before anything was committed; nothing was."""


# -- global transactions -----------------------------------------------------------------------


class TransactionError(TwostepError):
    """Something ended a global transaction other than a plain commit."""

    def __init__(self, message: str, *, gtrid: str | None = None):
        super().__init__(message)
        self.gtrid = gtrid


class TransactionEnded(TransactionError):
    """A statement came after its transaction had ended (or begun to end); it was not sent."""


class TransactionAborted(TransactionError):
    """The global transaction was rolled back on every database: nothing was committed."""


class OutcomeUnknown(TransactionError):
    """Commit was requested but its answer was lost; the coordinator finishes the branches.

    The outcome is decided (or will be) by the coordinator alone: look the gtrid up there.
    """


class PhaseTwoIncomplete(TransactionError):
    """The decision is COMMIT and durable, but some branches are not committed yet.

    The transaction *is* committed; the coordinator's recovery finishes the named branches.
    """

    def __init__(self, message: str, *, gtrid: str, pending: list[str]):
        super().__init__(message, gtrid=gtrid)
        self.pending = pending


class HeuristicOutcome(TransactionError):
    """A branch ended differently from the decision (e.g. rolled back by hand after COMMIT)."""


@contextlib.contextmanager
def translate_driver_errors(connection: str | None = None) -> Iterator[None]:
    """Re-raise psycopg / PyMySQL / sqlite3 errors as `DatabaseError` (the original as cause)."""
    try:
        yield
    except psycopg.Error as exc:
        code = exc.sqlstate
        kind = LockNotAvailable if code == _PG_LOCK_NOT_AVAILABLE else DatabaseError
        raise kind(_describe(connection, exc), connection=connection, code=code) from exc
    except pymysql.MySQLError as exc:
        code = str(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else None
        kind = LockNotAvailable if code == _MY_LOCK_WAIT_TIMEOUT else DatabaseError
        raise kind(_describe(connection, exc), connection=connection, code=code) from exc
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None)
        raise DatabaseError(_describe(connection, exc), connection=connection, code=code) from exc


def _describe(connection: str | None, exc: BaseException) -> str:
    where = f" on connection {connection!r}" if connection else ""
    return f"{type(exc).__name__}{where}: {exc}"


def is_connection_failure(exc: BaseException) -> bool:
    """Whether the session itself failed or was ended by the server (so it is unusable, and the
    server's verdict on a statement in flight is unknown to us)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, psycopg.Error) and _pg_session_ended(cause):
            return True
        if isinstance(cause, pymysql.err.InterfaceError):
            return True
        if isinstance(cause, pymysql.err.MySQLError):
            errno = cause.args[0] if cause.args else 0
            if isinstance(errno, int) and (
                errno >= _FIRST_CLIENT_ERRNO or errno in _MY_SESSION_ENDED
            ):
                return True
        if isinstance(cause, OSError | EOFError):
            return True
        cause = cause.__cause__
    return False


def _pg_session_ended(exc: psycopg.Error) -> bool:
    code = exc.sqlstate
    if code is None:
        return isinstance(exc, psycopg.OperationalError)  # raised by libpq: no server reply
    return code.startswith("08") or code in _PG_SESSION_ENDED
