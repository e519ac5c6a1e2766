"""`Dialect`, the base class of the three database families, and the shapes they share.

The base class holds what is the same everywhere or differs only by a class attribute: sending
one statement (`run`, the one function that sends SQL), placeholders and statement
classification through the dialect's lexer (`lexers`), quoting, and the INSERT and upsert a
model needs, written in the form PostgreSQL and SQLite share (MySQL overrides its pieces).
`ConnectionSettings`, `StatementResult` and `TableInfo` are what a dialect takes and returns.
"""

from __future__ import annotations

import contextlib
import re
import select
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._errors import translate_driver_errors
from .._statements import Statements, classify
from .._types import OTHER, ColumnType
from . import lexers

__all__ = ["ConnectionSettings", "Dialect", "StatementResult", "TableInfo"]


@dataclass(frozen=True)
class ConnectionSettings:
    """The validated settings of one connection; `repr` shows neither password nor options."""

    dialect: str
    database: str
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str = field(default="", repr=False)
    #: Seconds a new session may take: the TCP connect, the server's greeting, authentication
    #: and the session's setup (SQLite: its busy timeout).
    connect_timeout: float = 10.0
    #: Seconds each exchange with the server may wait once connected (each read and write;
    #: PostgreSQL: each statement), then the session is broken off. None: as long as the
    #: statement takes, the default for an application's sessions (a long query is its
    #: business); the coordinator bounds its own sessions (`twostep.coordinator._registry`).
    io_timeout: float | None = None
    #: Extra keyword arguments for the driver's connect(); may hold secrets, so never shown.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: How many sessions the pool keeps open between uses.
    pool_size: int = 8
    #: How many more it may open for a burst (closed when given back): the cap on open
    #: sessions is `pool_size + max_overflow`.
    max_overflow: int = 8
    #: How long a caller waits for a free session when the cap is reached (seconds).
    pool_timeout: float = 5.0


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


def _bound_params(params: object) -> tuple[Any, ...]:
    if type(params) is tuple or type(params) is list:  # the usual: no ABC checks (~1 us)
        return tuple(params)
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
        fd = self.socket_fd(session)
        if fd is None:
            return False
        try:
            readable, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):  # closed underneath
            return True
        return bool(readable)

    def socket_fd(self, session: Any) -> int | None:
        """The descriptor of the session's socket; None if it has none (closed, or SQLite)."""
        return None

    def close(self, session: Any) -> None:
        with contextlib.suppress(Exception):
            session.close()

    # -- statements ----------------------------------------------------------------------------

    def translate(self, sql: str, session: Any = None) -> tuple[str, int]:
        """`?`-placeholder SQL in the driver's own syntax, and how many parameters it takes,
        as `session` reads it (None: as a new session does)."""
        return lexers.translate(self.lexer_for(session), sql, self._format_params)

    def lexer_for(self, session: Any) -> re.Pattern[str]:
        """The lexer that reads SQL as `session`'s settings make the server read it (None: a
        new session's)."""
        return self._lexer

    def statements(self, sql: str) -> Statements:
        """What the statements of `sql` would do to an open transaction (see `_statements`)."""
        return self._classify(self._lexer, sql)

    def _classify(self, lexer: re.Pattern[str], sql: str) -> Statements:
        return classify(
            lexer,
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
        driver_sql, wanted = self.translate(sql, session)
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
