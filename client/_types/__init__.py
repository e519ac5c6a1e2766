"""The type contract of the model API, the same on PostgreSQL, MySQL/MariaDB and SQLite
(README "Types").

Every column is classified once, when its table is described (`postgres_column`,
`mysql_column`, `sqlite_column`), into a `Kind`. Every value a model sends for a column passes
`to_db()`, which refuses with `UnsupportedValue` (naming model and column) any value the column
would store changed: rounded, truncated, shifted in time, turned into NULL, or of another type
than the one that comes back. Every value a model reads passes the column's `loader()`, which
exists only for what the driver cannot know by itself.

Driver hooks, registered on every new session by the dialect's `connect()`:
- psycopg: `register_postgres()` adds a loader that returns `timestamptz` aware in UTC
  (psycopg's own gives the session's zone, whatever the server is configured with); psycopg's
  own adapters do everything else. The session's TimeZone is left alone: a startup option
  would break poolers that refuse it, and no value the contract sends depends on it.
- PyMySQL: `mysql_conversions()` is the connection's `conv`: encoders send an aware datetime
  as UTC and a UUID as text; decoders load TIME as `datetime.time` and TIMESTAMP aware in UTC
  (the session's time_zone is '+00:00', see `MYSQL_SESSION_SETUP`).
- sqlite3: none. Its adapters and converters are process-global registries: registering them
  would change every other sqlite3 user in the process (the coordinator's decision log among
  them), so SQLite's storage forms are made here, per column, from the declared type.
What no driver hook can know is loaded here by column: MariaDB's JSON is a LONGTEXT with a
json_valid check, its BOOLEAN a TINYINT(1), its UUID a string on the wire; SQLite has no
types at all, only the declared type name.

Measured on PostgreSQL 15.18, MariaDB 10.11.19, SQLite 3.40 (what this contract prevents):
PostgreSQL rounds numeric(p,s) and timestamp(0) silently, turns an aware datetime written
into `timestamp` into a naive one at the session's zone, stores 2.7 into an int column as 3
and a list into text as '{x}'; MariaDB rounds DECIMAL with only a note, truncates DATETIME
and TIME microseconds without one, drops an aware datetime's offset, refuses NaN and dicts
with raw errors, stores a list into TEXT as 'x'; SQLite stores NaN as NULL and Decimal text
in a DECIMAL column as a float of 15 digits.

Modules: `kinds` (`Kind`, `ColumnType`), `checks` (values sent, `to_db`), `loaders` (values
read, `loader`), and per database its columns' classification and driver hooks
(`postgresql`, `mysql`, `sqlite`). The rest of the client imports from this package.
"""

from __future__ import annotations

from .checks import to_db
from .kinds import OTHER, ColumnType, Kind
from .loaders import loader
from .mysql import MYSQL_SESSION_SETUP, mysql_column, mysql_conversions
from .postgresql import postgres_column, register_postgres
from .sqlite import sqlite_column

__all__ = [
    "MYSQL_SESSION_SETUP",
    "OTHER",
    "ColumnType",
    "Kind",
    "loader",
    "mysql_column",
    "mysql_conversions",
    "postgres_column",
    "register_postgres",
    "sqlite_column",
    "to_db",
]
