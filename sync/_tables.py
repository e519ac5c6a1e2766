"""The tables the sync helpers keep their state in, as DDL per dialect, and the pieces of SQL
and error codes that differ by dialect (`Connection.dialect.name`: postgresql, mysql, sqlite).

Each helper's `create_table()` creates its table (`CREATE TABLE IF NOT EXISTS`, and the index
its polling query needs); the helpers read and write it through an ActiveRecord model bound at
run time (`Model.using(connection)`)."""

from __future__ import annotations

from collections.abc import Mapping

from twostep.client import Connection, DatabaseError, get_connection

__all__ = ["create_table", "ddl", "is_duplicate_key"]

# Column types by dialect, for the shapes the helpers store: a short text key, JSON text, an
# instant (aware datetime: timestamptz / TIMESTAMP(6) / TIMESTAMPTZ, README "Types"),
# an auto-incremented 64-bit key.
_TYPES: Mapping[str, Mapping[str, str]] = {
    "postgresql": {
        "key": "VARCHAR(191)",
        "text": "TEXT",
        "instant": "TIMESTAMPTZ(6)",
        "serial": "BIGSERIAL PRIMARY KEY",
        "engine": "",
    },
    "mysql": {
        "key": "VARCHAR(191)",  # 191 characters of utf8mb4 fit InnoDB's 767-byte index prefix
        "text": "LONGTEXT",
        # explicit_defaults_for_timestamp is on (MariaDB 10.10+, MySQL 8): no hidden default
        "instant": "TIMESTAMP(6)",
        "serial": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "engine": " ENGINE=InnoDB",
    },
    "sqlite": {
        "key": "VARCHAR(191)",
        "text": "TEXT",
        "instant": "TIMESTAMPTZ",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "engine": "",
    },
}

# What each driver reports for a duplicate primary or unique key.
_DUPLICATE_CODES = frozenset(
    {"23505", "1062", "SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"}
)


def ddl(connection: Connection, table: str, columns: Mapping[str, str]) -> str:
    """`CREATE TABLE IF NOT EXISTS` for `columns` (name -> SQL type, where `{key}`, `{text}`,
    `{instant}` and `{serial}` stand for the dialect's), quoted for the connection's
    dialect."""
    dialect = connection.dialect
    types = _TYPES[dialect.name]
    parts = [f"{dialect.quote(name)} {shape.format_map(types)}" for name, shape in columns.items()]
    return (
        f"CREATE TABLE IF NOT EXISTS {dialect.quote_table(table)} ({', '.join(parts)})"
        f"{types['engine']}"
    )


def create_table(
    connection: str,
    table: str,
    columns: Mapping[str, str],
    *,
    indexes: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Run `ddl()` on the named connection, then `CREATE INDEX IF NOT EXISTS` for each of
    `indexes` (name -> columns); outside any transaction (MariaDB refuses DDL in an XA
    branch)."""
    conn = get_connection(connection)
    conn.execute(ddl(conn, table, columns))
    quote = conn.dialect.quote
    for name, indexed in (indexes or {}).items():
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {conn.dialect.quote_table(table)}"
            f" ({', '.join(map(quote, indexed))})"
        )


def is_duplicate_key(error: DatabaseError) -> bool:
    """The statement failed on a duplicate primary or unique key."""
    return error.code in _DUPLICATE_CODES
