"""What differs between PostgreSQL, MySQL/MariaDB and SQLite, each in one class.

A dialect knows how to open a driver session (always in driver-level autocommit, no transaction
open: whoever needs a transaction begins it explicitly), whether a session is idle, how `?`
placeholders become the driver's, how identifiers are quoted, what a table looks like, and the
few statements a model needs that are spelled differently per database (insert returning its
key, upsert).

`Dialect.run()` is the one function that sends SQL: `?` placeholders, parameters always bound
by the driver, driver errors translated at `translate_driver_errors`.

Placeholders: `?` outside string literals, quoted identifiers and comments is a parameter; a
`?` inside them stays as written. psycopg and PyMySQL read `%` as the start of their own
placeholders, so every literal `%` is doubled for them. PostgreSQL's jsonb operators `?`, `?|`
and `?&` therefore cannot be written in twostep SQL: use `jsonb_exists()`,
`jsonb_exists_any()` and `jsonb_exists_all()`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import select
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import psycopg
import pymysql
from psycopg.pq import TransactionStatus
from pymysql.constants import CLIENT, SERVER_STATUS

from ._errors import InvalidIdentifier, TwostepError, translate_driver_errors
from ._statements import Statements, classify
from ._types import (
    MYSQL_SESSION_SETUP,
    OTHER,
    ColumnType,
    mysql_column,
    mysql_conversions,
    postgres_column,
    register_postgres,
    sqlite_column,
)

__all__ = [
    "DIALECTS",
    "DRIVER_NAMES",
    "ConnectionSettings",
    "Dialect",
    "StatementResult",
    "TableInfo",
    "dialect_for_driver",
    "validate_identifier",
    "validate_table_name",
]

_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_identifier(value: object, kind: str = "identifier") -> str:
    """A table or column name from code: letters, digits, '_', at most 63 (PostgreSQL's limit)."""
    if not isinstance(value, str) or not _IDENTIFIER_RE.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidIdentifier(
            f"invalid {kind} {shown}: 1-63 of A-Z, a-z, 0-9 and '_', not starting with a digit"
        )
    return value


def validate_table_name(value: object) -> str:
    """`table` or `schema.table` (on MySQL the schema is a database), each part an identifier."""
    if not isinstance(value, str):
        return validate_identifier(value, "table name")
    for part in value.split(".", 1):
        validate_identifier(part, "table name")
    return value


@dataclass(frozen=True)
class ConnectionSettings:
    """The validated settings of one connection; `repr` shows neither password nor options."""

    dialect: str
    database: str
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str = field(default="", repr=False)
    connect_timeout: float = 10.0
    #: Extra keyword arguments for the driver's connect(); may hold secrets, so never shown.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: How many idle sessions the pool keeps.
    pool_size: int = 8


@dataclass(frozen=True)
class StatementResult:
    """What one statement returned."""

    #: Column names, or None when the statement returns no rows (then `rows` is empty).
    columns: tuple[str, ...] | None
    rows: list[tuple[Any, ...]]
    #: Rows affected as the driver reports it (0 when it does not know).
    rowcount: int
    #: The auto-generated id of an INSERT on MySQL and SQLite; None on PostgreSQL.
    lastrowid: int | None

    @property
    def output(self) -> list[tuple[Any, ...]] | int:
        """The rows for a statement that returns rows, else the row count."""
        return self.rows if self.columns is not None else self.rowcount


@dataclass(frozen=True)
class TableInfo:
    """What a model needs to know about its table."""

    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    #: The primary key is one column whose value the database generates and reports as
    #: `lastrowid` (MySQL AUTO_INCREMENT, SQLite INTEGER PRIMARY KEY).
    auto_key: bool = False
    #: Each column's type as the type contract sees it (`_types`).
    types: Mapping[str, ColumnType] = field(default_factory=dict)
    #: The column sets whose values are unique: the primary key and every unique index or
    #: constraint over plain columns without a WHERE (what an upsert can conflict on).
    unique_keys: tuple[tuple[str, ...], ...] = ()

    def type_of(self, column: str) -> ColumnType:
        return self.types.get(column, OTHER)


# -- placeholders ------------------------------------------------------------------------------

# Each lexer matches, in order: a span that is not SQL code (string literal, quoted identifier,
# comment), a `?`, a `%`. Unterminated spans run to the end so that the database, not twostep,
# reports the syntax error.
_PG_LEXER = re.compile(
    r"""
    (?P<skip>
        (?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'?           # E'...': backslash escapes
      | '(?:[^']|'')*'?                                # '...'
      | "(?:[^"]|"")*"?                                # "identifier"
      | --[^\n]*                                       # -- comment
      | /\*.*?(?:\*/|\Z)                               # /* comment */
      | (?<![\w$])\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z)   # $tag$...$tag$
    )
    | (?P<param>\?)
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)
_MYSQL_LEXER = re.compile(
    r"""
    (?P<skip>
        '(?:[^'\\]|\\.|'')*'?                          # '...' (backslash escapes)
      | "(?:[^"\\]|\\.|"")*"?                          # "..." (a string in MySQL)
      | `(?:[^`]|``)*`?                                # `identifier`
      | (?:\#|--(?=\s|\Z))[^\n]*                       # # comment, -- comment
      | /\*.*?(?:\*/|\Z)                               # /* comment */
    )
    | (?P<param>\?)
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)
_SQLITE_LEXER = re.compile(
    r"""
    (?P<skip>
        '(?:[^']|'')*'?
      | "(?:[^"]|"")*"?
      | `(?:[^`]|``)*`?
      | \[[^\]]*\]?                                    # [identifier]
      | --[^\n]*
      | /\*.*?(?:\*/|\Z)
    )
    | (?P<param>\?)
    """,
    re.VERBOSE | re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def _translate(lexer: re.Pattern[str], sql: str, to_format: bool) -> tuple[str, int]:
    """(driver SQL, number of `?` parameters); `to_format`: `?` -> `%s` and `%` -> `%%`."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match["param"]:
            count += 1
            return "%s" if to_format else "?"
        text = match[0]
        return text.replace("%", "%%") if to_format else text

    return lexer.sub(replace, sql), count


def _bound_params(params: object) -> tuple[Any, ...]:
    if isinstance(params, str | bytes | bytearray | Mapping) or not isinstance(params, Sequence):
        raise TypeError(
            f"params must be a list or tuple of values for the ? placeholders, "
            f"not {type(params).__name__}"
        )
    return tuple(params)


# -- dialects ----------------------------------------------------------------------------------


class Dialect(ABC):
    """One database family. Stateless: one instance per family, shared by every connection."""

    name: ClassVar[str]
    #: Config fields a connection of this dialect must have (besides `driver`).
    required_fields: ClassVar[tuple[str, ...]]
    #: Reached over the network (host, port, username, password); False for SQLite.
    has_server: ClassVar[bool] = True
    default_port: ClassVar[int | None] = None
    supports_returning: ClassVar[bool] = False
    _quote_char: ClassVar[str] = '"'
    _lexer: ClassVar[re.Pattern[str]]
    _format_params: ClassVar[bool] = True  # `%s` placeholders (psycopg, PyMySQL)
    _identifier_quotes: ClassVar[str] = '"'  # what opens a quoted identifier
    _executable_comments: ClassVar[bool] = False  # MySQL runs `/*! ... */` as code

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"

    # -- sessions ------------------------------------------------------------------------------

    @abstractmethod
    def connect(self, settings: ConnectionSettings) -> Any:
        """A new driver session in driver-level autocommit, no transaction open."""

    @abstractmethod
    def is_idle(self, session: Any) -> bool:
        """Open, in autocommit and without a transaction, judged from local state (no I/O)."""

    @abstractmethod
    def ping(self, session: Any) -> None:
        """One round trip; raises if the session is dead."""

    def has_input(self, session: Any) -> bool:
        """Whether the server sent something to an idle session (no I/O but a poll): it
        sends nothing unasked unless it is ending the session (KILL, shutdown, timeout)."""
        fd = self._socket(session)
        if fd is None:
            return False
        try:
            readable, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):  # closed underneath
            return True
        return bool(readable)

    def _socket(self, session: Any) -> Any:
        """The session's socket (anything with fileno()), or None when it has none."""
        return None

    def close(self, session: Any) -> None:
        with contextlib.suppress(Exception):
            session.close()

    # -- statements ----------------------------------------------------------------------------

    def translate(self, sql: str) -> tuple[str, int]:
        """`?`-placeholder SQL in the driver's own syntax, and how many parameters it takes."""
        return _translate(self._lexer, sql, self._format_params)

    def statements(self, sql: str) -> Statements:
        """What the statements of `sql` would do to an open transaction (see `_statements`)."""
        return classify(
            self._lexer,
            sql,
            identifier_quotes=self._identifier_quotes,
            executable_comments=self._executable_comments,
        )

    def run(
        self, session: Any, sql: str, params: Sequence[Any] = (), *, connection: str | None = None
    ) -> StatementResult:
        """Run one statement with `?` placeholders on `session`; the parameters are bound by the
        driver, never formatted in. Commits nothing itself: in an autocommit session the
        statement commits on its own, in a transaction it belongs to the transaction.
        Driver errors become `DatabaseError` naming `connection`."""
        values = _bound_params(params)
        driver_sql, wanted = self.translate(sql)
        if wanted != len(values):
            raise TypeError(
                f"the statement has {wanted} ? placeholder(s) but {len(values)} parameter(s) "
                "were given; nothing was sent"
            )
        with translate_driver_errors(connection), contextlib.closing(session.cursor()) as cur:
            cur.execute(driver_sql, values)
            if cur.description is None:
                columns, rows = None, []
            else:
                columns = tuple(d[0] for d in cur.description)
                rows = list(cur.fetchall())
            return StatementResult(
                columns, rows, max(cur.rowcount or 0, 0), getattr(cur, "lastrowid", None) or None
            )

    # -- identifiers and model statements ------------------------------------------------------

    #: `Query.for_update()` modes -> the locking clause that ends the SELECT.
    _lock_clauses: ClassVar[Mapping[str, str]] = {
        "update": " FOR UPDATE",
        "nowait": " FOR UPDATE NOWAIT",
        "skip_locked": " FOR UPDATE SKIP LOCKED",
    }

    def lock_clause(self, mode: str) -> str:
        """The clause that makes a SELECT lock the rows it returns (`Query.for_update()`)."""
        return self._lock_clauses[mode]

    def json_equals(self, column_sql: str) -> str:
        """A condition: the JSON column equals the bound JSON text `?` as a JSON value."""
        return f"{column_sql} = ?"

    def quote(self, identifier: str) -> str:
        q = self._quote_char
        return q + identifier.replace(q, q + q) + q

    def quote_table(self, table: str) -> str:
        return ".".join(self.quote(part) for part in table.split(".", 1))

    @abstractmethod
    def describe(self, session: Any, table: str, *, connection: str) -> TableInfo | None:
        """The table's columns and primary key; None if there is no such table."""

    def normalize(self, settings: ConnectionSettings) -> ConnectionSettings:
        """The settings every session of the connection is opened with."""
        return settings

    def needs_anchor(self, settings: ConnectionSettings) -> bool:
        """Whether the database lives only while a session is open (in-memory SQLite)."""
        return False

    def insert(self, table: str, columns: Sequence[str], returning: Sequence[str] = ()) -> str:
        """INSERT of one row (`?` for each column), returning `returning` if supported."""
        if columns:
            sql = (
                f"INSERT INTO {self.quote_table(table)} ({self._column_list(columns)})"
                f" VALUES {self._value_rows(len(columns), 1)}"
            )
        else:
            sql = self._insert_defaults(table)
        return sql + self._returning(returning)

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
        """INSERT of `rows` rows that updates the non-key columns of a row that already exists;
        `bump`: a column (`lock_version`) the update increments instead of overwriting."""
        insert = (
            f"INSERT INTO {self.quote_table(table)} ({self._column_list(columns)})"
            f" VALUES {self._value_rows(len(columns), rows)}"
        )
        updated = [c for c in columns if c not in conflict_keys and c != bump]
        if not updated and bump is None:
            updated = list(conflict_keys[:1])
        sets = [self._take_new(c) for c in updated]
        if bump is not None:
            sets.append(f"{self.quote(bump)} = COALESCE({self._existing(table, bump)}, 0) + 1")
        return insert + self._on_conflict(conflict_keys, sets) + self._returning(returning)

    def _column_list(self, columns: Sequence[str]) -> str:
        return ", ".join(map(self.quote, columns))

    @staticmethod
    def _value_rows(width: int, rows: int) -> str:
        row = "(" + ", ".join("?" * width) + ")"
        return ", ".join([row] * rows)

    def _insert_defaults(self, table: str) -> str:
        return f"INSERT INTO {self.quote_table(table)} DEFAULT VALUES"

    def _returning(self, columns: Sequence[str]) -> str:
        if not columns or not self.supports_returning:
            return ""
        return " RETURNING " + self._column_list(columns)

    def _take_new(self, column: str) -> str:
        """In an upsert's update: the column takes the value the INSERT proposed."""
        return f"{self.quote(column)} = excluded.{self.quote(column)}"

    def _existing(self, table: str, column: str) -> str:
        """In an upsert's update: the column's value in the row that already exists."""
        return f"{self.quote(table.rsplit('.', 1)[-1])}.{self.quote(column)}"

    def _on_conflict(self, conflict_keys: Sequence[str], sets: Sequence[str]) -> str:
        keys = self._column_list(conflict_keys)
        return f" ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)}"


class _Postgres(Dialect):
    name = "postgresql"
    required_fields = ("host", "database", "username")
    default_port = 5432
    supports_returning = True
    _lexer = _PG_LEXER

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
        kwargs.update(settings.options)
        kwargs["autocommit"] = True
        session = psycopg.connect(**kwargs)
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

    def _socket(self, session: psycopg.Connection[Any]) -> Any:
        return session

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


class _MySQL(Dialect):
    name = "mysql"
    required_fields = ("host", "database", "username")
    default_port = 3306
    _quote_char = "`"
    _lexer = _MYSQL_LEXER
    _identifier_quotes = "`"
    _executable_comments = True

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
        kwargs.update(settings.options)
        kwargs["autocommit"] = True
        # The type contract's encoders and decoders (`_types`). FOUND_ROWS: an UPDATE reports
        # the rows it matched, as on PostgreSQL and SQLite, not only those it changed.
        kwargs["conv"] = mysql_conversions(kwargs.get("conv"))
        kwargs["client_flag"] = kwargs.get("client_flag", 0) | CLIENT.FOUND_ROWS
        session = pymysql.connect(**kwargs)
        try:
            with session.cursor() as cur:
                cur.execute(MYSQL_SESSION_SETUP)
        except BaseException:
            self.close(session)
            raise
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

    def _socket(self, session: pymysql.Connection) -> Any:
        return session._sock  # PyMySQL keeps its socket there (None once closed)

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


class _SQLite(Dialect):
    name = "sqlite"
    required_fields = ("database",)
    has_server = False
    supports_returning = sqlite3.sqlite_version_info >= (3, 35)
    _lexer = _SQLITE_LEXER
    _format_params = False  # sqlite3 takes `?` itself
    _identifier_quotes = '"`['

    def connect(self, settings: ConnectionSettings) -> sqlite3.Connection:
        kwargs: dict[str, Any] = {"timeout": settings.connect_timeout}
        kwargs.update(settings.options)
        # Sessions move between threads through the pool, one thread at a time.
        kwargs.update(isolation_level=None, check_same_thread=False)
        return sqlite3.connect(settings.database, **kwargs)

    def is_idle(self, session: sqlite3.Connection) -> bool:
        try:
            return session.isolation_level is None and not session.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return False

    def ping(self, session: sqlite3.Connection) -> None:
        pass  # a local file: no server to lose

    def describe(
        self, session: sqlite3.Connection, table: str, *, connection: str
    ) -> TableInfo | None:
        schema, _, name = table.rpartition(".")
        prefix = self.quote(schema) + "." if schema else ""

        def pragma(call: str) -> list[tuple[Any, ...]]:
            # PRAGMA takes no parameters: every name in `call` is a validated identifier
            # or a name SQLite gave, quoted.
            return self.run(session, f"PRAGMA {prefix}{call}", connection=connection).rows

        rows = pragma(f"table_info({self.quote(name)})")
        if not rows:
            return None
        # (cid, name, type, notnull, default, pk position or 0)
        key = sorted((row[5], row[1]) for row in rows if row[5])
        primary_key = tuple(n for _, n in key)
        declared = {row[1]: row[2] or "" for row in rows}
        unique = [primary_key] if primary_key else []
        # index_list: (seq, name, unique, origin, partial); index_info: (seqno, cid, name)
        for _, index, is_unique, _, partial in pragma(f"index_list({self.quote(name)})"):
            if is_unique and not partial:
                info = pragma(f"index_info({self.quote(index)})")
                if all(column is not None for _, _, column in info):  # no expressions
                    unique.append(tuple(column for _, _, column in info))
        return TableInfo(
            table,
            tuple(row[1] for row in rows),
            primary_key,
            # Only a column declared exactly INTEGER PRIMARY KEY is the rowid.
            auto_key=len(primary_key) == 1 and declared[primary_key[0]].upper() == "INTEGER",
            types={column: sqlite_column(text) for column, text in declared.items()},
            unique_keys=tuple(dict.fromkeys(unique)),
        )

    def lock_clause(self, mode: str) -> str:
        raise TwostepError(
            "SQLite has no row locks, so for_update() cannot lock rows there: a write locks "
            "the whole database. Inside a Transaction, a read followed by a write that races "
            "another writer fails with 'database is locked' (no update is lost; retry it). "
            "Use an atomic update, Model.where(...).update(n=F('n') + 1), or lock_version"
        )

    def normalize(self, settings: ConnectionSettings) -> ConnectionSettings:
        if settings.database != ":memory:":
            return settings
        # Each plain ":memory:" session would see its own empty database; the memdb VFS gives
        # one in-memory database that every session of the pool shares, with normal locking.
        database = f"file:/twostep-{uuid.uuid4().hex}?vfs=memdb"
        return replace(settings, database=database, options={**settings.options, "uri": True})

    def needs_anchor(self, settings: ConnectionSettings) -> bool:
        return settings.database.startswith("file:/twostep-") and "vfs=memdb" in settings.database


#: The dialects by name (`Connection.dialect.name`).
DIALECTS: Mapping[str, Dialect] = {
    "postgresql": _Postgres(),
    "mysql": _MySQL(),
    "sqlite": _SQLite(),
}
_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}
#: Every accepted `driver` value of a connection config, aliases included.
DRIVER_NAMES = tuple(sorted([*DIALECTS, *_ALIASES]))


def dialect_for_driver(driver: str) -> Dialect | None:
    """The dialect of a config's `driver` value (aliases accepted); None if unknown."""
    return DIALECTS.get(_ALIASES.get(driver, driver))
