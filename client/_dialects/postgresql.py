"""PostgreSQL through psycopg 3: sessions, idleness, the catalog queries that describe a table,
and JSON equality."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .._statements import Statements, classify_postgresql
from .._types import postgres_column, register_postgres
from .base import ConnectionSettings, Dialect, TableInfo
from .lexers import POSTGRESQL_LEXER

__all__ = ["PostgreSQL"]


class PostgreSQL(Dialect):
    name = "postgresql"
    required_fields = ("host", "database", "username")
    default_port = 5432
    supports_returning = True
    _lexer = POSTGRESQL_LEXER

    def statements(self, sql: str) -> Statements:
        # Nested comments and the session's standard_conforming_strings: see _statements.
        return classify_postgresql(sql)

    def connect(self, settings: ConnectionSettings) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port or self.default_port,
            "dbname": settings.database,
            "user": settings.username,
            # libpq counts whole seconds, and takes less than 2 as 2.
            "connect_timeout": max(2, round(settings.connect_timeout)),
            "application_name": "twostep",
        }
        if settings.password:
            kwargs["password"] = settings.password
        connection_class: type[psycopg.Connection[Any]] = psycopg.Connection
        if settings.io_timeout is not None:
            kwargs.update(_io_bounds(settings.io_timeout))
            connection_class = _BoundedConnection
        kwargs.update(settings.options)
        if settings.io_timeout is not None:
            # The server gives up on a statement too, rather than working on for no one.
            ms = max(1, round(settings.io_timeout * 1000))
            kwargs["options"] = f"{kwargs.get('options', '')} -c statement_timeout={ms}".strip()
        kwargs["autocommit"] = True
        session = connection_class.connect(**kwargs)
        if isinstance(session, _BoundedConnection):
            session.io_timeout = settings.io_timeout
        register_postgres(session)  # the type contract's loaders (`_types`)
        return session

    def is_idle(self, session: psycopg.Connection[Any]) -> bool:
        return (
            not session.closed
            and not session.broken
            and session.autocommit
            and session.info.transaction_status == TransactionStatus.IDLE
        )

    def ping(self, session: psycopg.Connection[Any]) -> None:
        session.execute("SELECT 1")

    def socket_fd(self, session: psycopg.Connection[Any]) -> int | None:
        return None if session.closed else session.fileno()

    def describe(
        self, session: psycopg.Connection[Any], table: str, *, connection: str
    ) -> TableInfo | None:
        # indkey is an int2vector, 0-based: the position orders a composite primary key.
        regclass = (self.quote_table(table),)
        result = self.run(
            session,
            "SELECT a.attname, array_position(i.indkey::int2[], a.attnum), t.typname,"
            " t.typcategory, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary"
            " WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum",
            regclass,
            connection=connection,
        )
        if not result.rows:
            return None
        key = sorted((pos, name) for name, pos, *_ in result.rows if pos is not None)
        # Unique indexes over plain columns, without WHERE; INCLUDE columns are not the key.
        unique = self.run(
            session,
            "SELECT array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY"
            " AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = k.attnum WHERE k.n <= i.indnkeyatts ORDER BY k.n)"
            " FROM pg_index i WHERE i.indrelid = to_regclass(?) AND i.indisunique"
            " AND i.indpred IS NULL AND i.indexprs IS NULL",
            regclass,
            connection=connection,
        ).rows
        return TableInfo(
            table,
            tuple(row[0] for row in result.rows),
            tuple(n for _, n in key),
            types={name: postgres_column(*rest) for name, _, *rest in result.rows},
            unique_keys=tuple(tuple(row[0]) for row in unique),
        )

    def json_equals(self, column_sql: str) -> str:
        # `json` has no equality operator; jsonb compares values (key order, spacing aside).
        return f"CAST({column_sql} AS jsonb) = CAST(? AS jsonb)"


def _io_bounds(seconds: float) -> dict[str, Any]:
    """libpq's settings that end a session whose server or network went silent: keepalive
    probes after `seconds` idle, and unacknowledged data for longer than `seconds`."""
    whole = max(1, round(seconds))
    return {
        "keepalives": 1,
        "keepalives_idle": whole,
        "keepalives_interval": max(1, whole // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": whole * 1000,
    }


class _BoundedConnection(psycopg.Connection[Any]):
    """A session whose every exchange with the server gives up after `io_timeout` seconds.

    Neither keepalives nor `statement_timeout` notice a server that accepts bytes and never
    answers (a stopped process, a stalled proxy: its kernel acknowledges them). psycopg runs
    each statement through `wait()`, whose timeout it otherwise leaves unset; an expired one
    raises an `OperationalError`, and the session, its statement still in flight, is closed.
    """

    io_timeout: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = self.io_timeout
        try:
            return super().wait(gen, interval, timeout)
        except psycopg.OperationalError:
            if self.pgconn.transaction_status == TransactionStatus.ACTIVE:
                self.pgconn.finish()  # gave up waiting; the reply may still come: never reuse
            raise
