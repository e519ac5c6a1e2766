"""Values read: `loader`, what turns a column's stored value into the contract's Python value
where the driver cannot know it (MySQL/MariaDB and SQLite; PostgreSQL needs none)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

from .kinds import ColumnType, Kind

__all__ = ["loader"]


def loader(dialect: str, ctype: ColumnType) -> Callable[[Any], Any] | None:
    """What turns a column's stored value (never None) into the contract's Python value, for
    what the driver cannot know; None when the driver already returns it. A loader raises
    ValueError for a stored value that is not of the column's kind (written by other SQL)."""
    if dialect == "mysql":
        return _MYSQL_LOADERS.get(ctype.kind)
    if dialect == "sqlite":
        if ctype.kind is Kind.DECIMAL:
            return lambda value: _load_decimal(value, ctype.scale)
        return _SQLITE_LOADERS.get(ctype.kind)
    return None


def _load_bool(value: Any) -> bool:
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"{value!r} is not a stored boolean (0 or 1)")


def _load_json(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value)


def _load_uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(value.decode() if isinstance(value, bytes) else value)


# Exact: quantizing a float's few digits to the column's scale adds zeros, never rounds.
_EXACT = decimal.Context(prec=2000, traps=[decimal.Inexact, decimal.InvalidOperation])


def _load_decimal(value: Any, scale: int | None) -> decimal.Decimal:
    if isinstance(value, float):
        number = decimal.Decimal(repr(value))  # the shortest text that is this float
    elif isinstance(value, int | str):
        number = decimal.Decimal(value)
    else:
        raise ValueError(f"{value!r} is not a stored decimal")
    if scale is None or not number.is_finite():
        return number
    return number.quantize(decimal.Decimal(1).scaleb(-scale), context=_EXACT)


def _load_instant(value: Any) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    if parsed.utcoffset() is None:  # SQLite's CURRENT_TIMESTAMP: UTC, written without offset
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


_MYSQL_LOADERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.BOOL: _load_bool,
    Kind.JSON: _load_json,
    Kind.UUID: _load_uuid,
}
_SQLITE_LOADERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.BOOL: _load_bool,
    Kind.DATE: dt.date.fromisoformat,
    Kind.TIME: dt.time.fromisoformat,
    Kind.DATETIME: dt.datetime.fromisoformat,
    Kind.INSTANT: _load_instant,
    Kind.UUID: _load_uuid,
    Kind.JSON: _load_json,
}
