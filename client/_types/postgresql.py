"""PostgreSQL's side of the type contract: its columns classified from the catalog, and the
psycopg loader that returns `timestamptz` aware in UTC (registered by the dialect's
`connect()` on each session; psycopg's own adapters do everything else)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader

from .kinds import ColumnType, Kind, with_limits

__all__ = ["postgres_column", "register_postgres"]

# -- classifying columns -----------------------------------------------------------------------

_PG_KINDS = {
    "bool": Kind.BOOL,
    "int2": Kind.INT,
    "int4": Kind.INT,
    "int8": Kind.INT,
    "float4": Kind.FLOAT,
    "float8": Kind.FLOAT,
    "numeric": Kind.DECIMAL,
    "text": Kind.TEXT,
    "varchar": Kind.TEXT,
    "bpchar": Kind.TEXT,
    "name": Kind.TEXT,
    "citext": Kind.TEXT,
    "bytea": Kind.BYTES,
    "date": Kind.DATE,
    "time": Kind.TIME,
    "timestamp": Kind.DATETIME,
    "timestamptz": Kind.INSTANT,
    "uuid": Kind.UUID,
    "json": Kind.JSON,
    "jsonb": Kind.JSON,
}


def postgres_column(typname: str, category: str, declared: str) -> ColumnType:
    """From `pg_type.typname`, `pg_type.typcategory` and `format_type(atttypid, atttypmod)`."""
    kind = Kind.ARRAY if category == "A" else _PG_KINDS.get(typname, Kind.OTHER)
    return with_limits(kind, declared, single=typname == "float4", fraction=6)


# -- psycopg hooks -----------------------------------------------------------------------------


class _UtcTimestamptzLoader(TimestamptzLoader):
    def load(self, data: Any) -> dt.datetime:
        return super().load(data).astimezone(dt.UTC)


class _UtcTimestamptzBinaryLoader(TimestamptzBinaryLoader):
    def load(self, data: Any) -> dt.datetime:
        return super().load(data).astimezone(dt.UTC)


def register_postgres(session: Any) -> None:
    """Register the contract's loaders on one psycopg connection (its own adapters map)."""
    session.adapters.register_loader("timestamptz", _UtcTimestamptzLoader)
    session.adapters.register_loader("timestamptz", _UtcTimestamptzBinaryLoader)
