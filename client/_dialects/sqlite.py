"""SQLite through the standard library's sqlite3: sessions, idleness, the PRAGMAs that describe
a table, the refusal of row locks, and one shared database for `:memory:`."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from typing import Any

from .._errors import TwostepError
from .._types import sqlite_column
from .base import ConnectionSettings, Dialect, TableInfo
from .lexers import SQLITE_LEXER

__all__ = ["SQLite"]


class SQLite(Dialect):
    name = "sqlite"
    required_fields = ("database",)
    has_server = False
    supports_returning = sqlite3.sqlite_version_info >= (3, 35)
    _lexer = SQLITE_LEXER
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
