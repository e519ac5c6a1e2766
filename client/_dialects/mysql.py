"""MySQL and MariaDB through PyMySQL: sessions, idleness, the information_schema queries that
describe a table (MariaDB's JSON columns among them), and the upsert spelled ON DUPLICATE KEY."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pymysql
from pymysql.constants import CLIENT, SERVER_STATUS

from .._statements import Statements
from .._types import MYSQL_SESSION_SETUP, mysql_column, mysql_conversions
from .base import ConnectionSettings, Dialect, TableInfo
from .lexers import MYSQL_LEXER, MYSQL_NO_BACKSLASH_LEXER

__all__ = ["MySQL"]


class MySQL(Dialect):
    name = "mysql"
    required_fields = ("host", "database", "username")
    default_port = 3306
    _quote_char = "`"
    _lexer = MYSQL_LEXER
    _identifier_quotes = "`"
    _executable_comments = True

    def lexer_for(self, session: pymysql.Connection | None) -> re.Pattern[str]:
        # The server reports the session's NO_BACKSLASH_ESCAPES with every reply, as it is
        # now (a SET sql_mode changes it), in the status flags PyMySQL's own escaping reads.
        status = 0 if session is None else session.server_status
        if status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            return MYSQL_NO_BACKSLASH_LEXER
        return MYSQL_LEXER

    def statements(self, sql: str) -> Statements:
        # Read before the session is lent, so under both readings of a backslash: a statement
        # found by either counts (as `classify_postgresql` does for its two readings).
        found = [self._classify(lexer, sql) for lexer in (MYSQL_LEXER, MYSQL_NO_BACKSLASH_LEXER)]
        if found[0] == found[1]:
            return found[0]
        return Statements(found[0].words + found[1].words)

    def connect(self, settings: ConnectionSettings) -> pymysql.Connection:
        kwargs: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port or self.default_port,
            "database": settings.database,
            "user": settings.username,
            "password": settings.password,
            "connect_timeout": settings.connect_timeout,
            "charset": "utf8mb4",
        }
        if settings.io_timeout is not None:
            kwargs["read_timeout"] = kwargs["write_timeout"] = settings.io_timeout
        kwargs.update(settings.options)
        kwargs["autocommit"] = True
        # The type contract's encoders and decoders (`_types`). FOUND_ROWS: an UPDATE reports
        # the rows it matched, as on PostgreSQL and SQLite, not only those it changed.
        kwargs["conv"] = mysql_conversions(kwargs.get("conv"))
        kwargs["client_flag"] = kwargs.get("client_flag", 0) | CLIENT.FOUND_ROWS
        # PyMySQL's connect_timeout bounds the TCP connect only: the greeting, authentication
        # and the setup below are reads and writes, bounded by connect_timeout too until the
        # session is set up; then it gets the timeouts asked for (none by default).
        reads, writes = kwargs.get("read_timeout"), kwargs.get("write_timeout")
        kwargs["read_timeout"] = _shorter(reads, settings.connect_timeout)
        kwargs["write_timeout"] = _shorter(writes, settings.connect_timeout)
        session = pymysql.connect(**kwargs)
        try:
            with session.cursor() as cur:
                cur.execute(MYSQL_SESSION_SETUP)
        except BaseException:
            self.close(session)
            raise
        # PyMySQL has no public setter; it applies these before its next read or write.
        session._read_timeout, session._write_timeout = reads, writes
        return session

    def is_idle(self, session: pymysql.Connection) -> bool:
        # server_status comes with every reply: IN_TRANS is set from BEGIN / XA START until
        # the transaction ends, through XA END and XA PREPARE too (measured on MariaDB 10.11).
        status = session.server_status
        return (
            session.open
            and bool(status & SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT)
            and not status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
        )

    def ping(self, session: pymysql.Connection) -> None:
        session.ping(reconnect=False)

    def socket_fd(self, session: pymysql.Connection) -> int | None:
        sock = session._sock  # PyMySQL has no public accessor; None once closed
        return None if sock is None else sock.fileno()

    def describe(
        self, session: pymysql.Connection, table: str, *, connection: str
    ) -> TableInfo | None:
        schema, _, name = table.rpartition(".")
        where = "table_schema = COALESCE(?, DATABASE()) AND table_name = ?"
        params = (schema or None, name)
        columns = self.run(
            session,
            "SELECT column_name, extra, data_type, column_type FROM information_schema.columns"
            f" WHERE {where} ORDER BY ordinal_position",
            params,
            connection=connection,
        ).rows
        if not columns:
            return None
        unique: dict[str, list[str]] = {}
        for index, column in self.run(
            session,
            f"SELECT index_name, column_name FROM information_schema.statistics WHERE {where}"
            " AND non_unique = 0 ORDER BY index_name, seq_in_index",
            params,
            connection=connection,
        ).rows:
            unique.setdefault(index, []).append(column)
        primary_key = tuple(unique.get("PRIMARY", ()))
        auto = {row[0] for row in columns if "auto_increment" in (row[1] or "").lower()}
        json_columns = self._json_columns(session, params, connection, columns)
        types = {
            column: mysql_column(data_type, column_type, is_json=column in json_columns)
            for column, _, data_type, column_type in columns
        }
        return TableInfo(
            table,
            tuple(row[0] for row in columns),
            primary_key,
            auto_key=len(primary_key) == 1 and primary_key[0] in auto,
            types=types,
            unique_keys=tuple(map(tuple, unique.values())),
        )

    def _json_columns(
        self, session: pymysql.Connection, params: tuple[Any, ...], connection: str, columns: Any
    ) -> set[str]:
        """MariaDB's JSON is LONGTEXT with a `json_valid(col)` check (MySQL 8's has its own
        type); the check is listed by table only on MariaDB."""
        if "mariadb" not in session.get_server_info().lower():
            return set()
        if not any(data_type.lower() == "longtext" for _, _, data_type, _ in columns):
            return set()
        clauses = {
            clause.strip()
            for (clause,) in self.run(
                session,
                "SELECT check_clause FROM information_schema.check_constraints"
                " WHERE constraint_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                params,
                connection=connection,
            ).rows
        }
        return {row[0] for row in columns if f"json_valid({self.quote(row[0])})" in clauses}

    def _insert_defaults(self, table: str) -> str:
        return f"INSERT INTO {self.quote_table(table)} () VALUES ()"

    def _take_new(self, column: str) -> str:
        return f"{self.quote(column)} = VALUES({self.quote(column)})"

    def _existing(self, table: str, column: str) -> str:
        return self.quote(column)

    def _on_conflict(self, conflict_keys: Sequence[str], sets: Sequence[str]) -> str:
        # MySQL matches any unique key, not only `conflict_keys`.
        return f" ON DUPLICATE KEY UPDATE {', '.join(sets)}"

    def json_equals(self, column_sql: str) -> str:
        # `= 1`: measured on MariaDB 10.11, a bare `WHERE JSON_EQUALS(col, ?)` matches rows
        # whose column is NULL too.
        return f"JSON_EQUALS({column_sql}, ?) = 1"

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        rows: int,
        conflict_keys: Sequence[str],
        returning: Sequence[str] = (),
        *,
        bump: str | None = None,
    ) -> str:
        sql = super().upsert(table, columns, rows, conflict_keys, bump=bump)
        if len(returning) == 1:
            # Makes `lastrowid` the key of the updated row too, not only of an inserted one.
            key = self.quote(returning[0])
            sql += f", {key} = LAST_INSERT_ID({key})"
        return sql


def _shorter(timeout: float | None, bound: float) -> float:
    return bound if timeout is None else min(timeout, bound)
