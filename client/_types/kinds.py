"""The contract's vocabulary: what a column holds (`Kind`) and the limits that decide whether a
value fits it unchanged (`ColumnType`), built from a declared type by `with_limits`."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["OTHER", "ColumnType", "Kind", "with_limits"]


class Kind(enum.Enum):
    """What a column holds, as the contract sees it."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    DECIMAL = "decimal"
    TEXT = "text"
    BYTES = "bytes"
    DATE = "date"
    TIME = "time"  # a time of day, no zone
    DATETIME = "datetime"  # a wall-clock date and time, no zone
    INSTANT = "instant"  # a point in time: stored as UTC, returned aware in UTC
    UUID = "uuid"
    JSON = "json"
    ARRAY = "array"  # PostgreSQL arrays
    OTHER = "other"  # outside the contract (interval, enum, inet, ...): scalars pass through


@dataclass(frozen=True)
class ColumnType:
    """One column's kind and the limits that decide whether a value fits it unchanged."""

    kind: Kind
    #: The type as the database names it (for messages): 'numeric(10,2)', 'tinyint(1)'.
    declared: str
    #: DECIMAL: digits in all, and digits after the point (negative on PostgreSQL rounds to
    #: tens, hundreds...); None: unbounded (PostgreSQL `numeric`, SQLite without (p,s)).
    precision: int | None = None
    scale: int | None = None
    #: TIME / DATETIME / INSTANT: fractional-second digits kept (0-6).
    fraction: int = 6
    #: FLOAT: a 4-byte float (PostgreSQL real, MySQL FLOAT).
    single: bool = False


OTHER = ColumnType(Kind.OTHER, "unknown")


_ARGS = re.compile(r"\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)")


def _args(declared: str) -> tuple[int | None, int | None]:
    match = _ARGS.search(declared)
    if match is None:
        return None, None
    first, second = match.groups()
    return int(first), None if second is None else int(second)


def with_limits(kind: Kind, declared: str, *, single: bool, fraction: int) -> ColumnType:
    """The `ColumnType` of a `kind` column declared as `declared` ('numeric(10,2)'), its
    limits read from the declaration; `fraction`: the fractional-second digits of a time type
    declared without them."""
    first, second = _args(declared)
    if kind is Kind.DECIMAL:
        if first is not None and second is None:
            second = 0  # DECIMAL(p) is DECIMAL(p,0)
        return ColumnType(kind, declared, precision=first, scale=second)
    if kind in (Kind.TIME, Kind.DATETIME, Kind.INSTANT):
        return ColumnType(kind, declared, fraction=fraction if first is None else first)
    return ColumnType(kind, declared, single=single and kind is Kind.FLOAT)
