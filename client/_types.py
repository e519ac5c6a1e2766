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

Measured on PostgreSQL 15.18, MariaDB 10.11.19, SQLite 3.40 (what this module prevents):
PostgreSQL rounds numeric(p,s) and timestamp(0) silently, turns an aware datetime written
into `timestamp` into a naive one at the session's zone, stores 2.7 into an int column as 3
and a list into text as '{x}'; MariaDB rounds DECIMAL with only a note, truncates DATETIME
and TIME microseconds without one, drops an aware datetime's offset, refuses NaN and dicts
with raw errors, stores a list into TEXT as 'x'; SQLite stores NaN as NULL and Decimal text
in a DECIMAL column as a float of 15 digits.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from pymysql import converters as _my
from pymysql.constants import FIELD_TYPE

from ._errors import UnsupportedValue

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

# -- classifying columns -----------------------------------------------------------------------

_ARGS = re.compile(r"\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)")


def _args(declared: str) -> tuple[int | None, int | None]:
    match = _ARGS.search(declared)
    if match is None:
        return None, None
    first, second = match.groups()
    return int(first), None if second is None else int(second)


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
    return _with_limits(kind, declared, single=typname == "float4", fraction=6)


_MY_KINDS = {
    "tinyint": Kind.INT,
    "smallint": Kind.INT,
    "mediumint": Kind.INT,
    "int": Kind.INT,
    "bigint": Kind.INT,
    "float": Kind.FLOAT,
    "double": Kind.FLOAT,
    "decimal": Kind.DECIMAL,
    "char": Kind.TEXT,
    "varchar": Kind.TEXT,
    "tinytext": Kind.TEXT,
    "text": Kind.TEXT,
    "mediumtext": Kind.TEXT,
    "longtext": Kind.TEXT,
    "binary": Kind.BYTES,
    "varbinary": Kind.BYTES,
    "tinyblob": Kind.BYTES,
    "blob": Kind.BYTES,
    "mediumblob": Kind.BYTES,
    "longblob": Kind.BYTES,
    "date": Kind.DATE,
    "time": Kind.TIME,
    "datetime": Kind.DATETIME,
    "timestamp": Kind.INSTANT,  # stored as UTC by the server, converted by session time_zone
    "uuid": Kind.UUID,  # MariaDB 10.7+
    "json": Kind.JSON,  # MySQL 8 (MariaDB: a LONGTEXT with a json_valid check, see `is_json`)
}


def mysql_column(data_type: str, column_type: str, *, is_json: bool) -> ColumnType:
    """From information_schema.COLUMNS (DATA_TYPE, COLUMN_TYPE); `is_json`: the column has a
    `json_valid(col)` check, which is what MariaDB's JSON type is."""
    data_type = data_type.lower()
    if is_json:
        kind, column_type = Kind.JSON, "json"
    elif data_type == "tinyint" and column_type.lower().startswith("tinyint(1)"):
        kind = Kind.BOOL  # BOOLEAN is TINYINT(1): the convention ActiveRecord users know
    else:
        kind = _MY_KINDS.get(data_type, Kind.OTHER)
    # MySQL's DATETIME, TIME and TIMESTAMP keep no fraction unless declared with one.
    return _with_limits(kind, column_type, single=data_type == "float", fraction=0)


def sqlite_column(declared: str) -> ColumnType:
    """From the declared type (PRAGMA table_info): these names first, then SQLite's affinity
    rules (https://sqlite.org/datatype3.html#determination_of_column_affinity)."""
    base = " ".join(re.sub(r"\(.*?\)", " ", declared.upper()).split())  # TIMESTAMP(3) WITH ...
    named = {
        "BOOLEAN": Kind.BOOL,
        "BOOL": Kind.BOOL,
        "DECIMAL": Kind.DECIMAL,
        "NUMERIC": Kind.DECIMAL,
        "DATE": Kind.DATE,
        "TIME": Kind.TIME,
        "DATETIME": Kind.DATETIME,
        "TIMESTAMP": Kind.DATETIME,
        "TIMESTAMPTZ": Kind.INSTANT,
        "TIMESTAMP WITH TIME ZONE": Kind.INSTANT,
        "UUID": Kind.UUID,
        "JSON": Kind.JSON,
        "JSONB": Kind.JSON,
    }
    kind = named.get(base)
    if kind is None:
        if "INT" in base:
            kind = Kind.INT
        elif any(word in base for word in ("CHAR", "CLOB", "TEXT")):
            kind = Kind.TEXT
        elif "BLOB" in base:
            kind = Kind.BYTES
        elif any(word in base for word in ("REAL", "FLOA", "DOUB")):
            kind = Kind.FLOAT
        else:
            kind = Kind.OTHER  # no type, or NUMERIC affinity under another name
    return _with_limits(kind, declared or "(none)", single=False, fraction=6)


def _with_limits(kind: Kind, declared: str, *, single: bool, fraction: int) -> ColumnType:
    """`fraction`: the fractional-second digits of a time type declared without them."""
    first, second = _args(declared)
    if kind is Kind.DECIMAL:
        if first is not None and second is None:
            second = 0  # DECIMAL(p) is DECIMAL(p,0)
        return ColumnType(kind, declared, precision=first, scale=second)
    if kind in (Kind.TIME, Kind.DATETIME, Kind.INSTANT):
        return ColumnType(kind, declared, fraction=fraction if first is None else first)
    return ColumnType(kind, declared, single=single and kind is Kind.FLOAT)


# -- values sent -------------------------------------------------------------------------------


class _Refused(Exception):
    """Why a value does not fit a column; `to_db` turns it into `UnsupportedValue`."""


def to_db(dialect: str, ctype: ColumnType, value: Any, *, model: str, column: str) -> Any:
    """`value` as the driver should bind it for a column of `ctype` on `dialect`
    ('postgresql', 'mysql', 'sqlite'); None stays None (SQL NULL).

    Raises `UnsupportedValue` naming `model` and `column` when the column would not give the
    same value back: another Python type, a rounded number, a shifted or truncated time, a
    NaN that becomes NULL, a value of a type outside the contract."""
    if value is None:
        return None
    try:
        return _CHECKS[ctype.kind](dialect, ctype, value)
    except _Refused as refused:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise UnsupportedValue(
            f"{model}.{column} ({ctype.declared} on {dialect}) cannot store {shown}: {refused}",
            model=model,
            column=column,
        ) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected(what: str, value: Any) -> _Refused:
    return _Refused(f"it takes {what}, not {type(value).__name__}")


def _bool(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, bool):
        raise _expected("bool", value)
    return value


_INT64 = range(-(2**63), 2**63)


def _int(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not _is_int(value):
        raise _expected("int", value)
    if dialect == "sqlite" and value not in _INT64:
        raise _Refused("SQLite integers are 64-bit")
    return int(value)


_FLOAT_EXACT_INT = 2**53
_FLOAT32_DIGITS = 6  # FLT_DIG: MySQL prints a FLOAT with 6 significant digits


def _float(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if _is_int(value):
        if abs(value) > _FLOAT_EXACT_INT:
            raise _Refused("an int above 2**53 would be rounded by a float column")
        value = float(value)
    elif not isinstance(value, float):
        raise _expected("float", value)
    if math.isnan(value) and dialect != "postgresql":
        raise _Refused("NaN: MySQL refuses it and SQLite stores it as NULL")
    if math.isinf(value) and dialect == "mysql":
        raise _Refused("MySQL has no infinity")
    if ctype.single and math.isfinite(value) and not _fits_float32(value):
        # 0.1 is stored as 0.100000001490116..., so where(x=0.1) would not find it either.
        raise _Refused(
            "a 4-byte float column holds exactly only values like 0.5 or 123.25 (a 4-byte "
            "binary fraction, at most 6 significant digits); use double precision"
        )
    return float(value)


def _fits_float32(value: float) -> bool:
    try:
        (single,) = struct.unpack("f", struct.pack("f", value))
    except OverflowError:
        return False
    mantissa = repr(value).lower().split("e", 1)[0].lstrip("-").replace(".", "")
    return single == value and len(mantissa.strip("0")) <= _FLOAT32_DIGITS


def _decimal(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if _is_int(value):
        value = decimal.Decimal(value)
    elif not isinstance(value, decimal.Decimal):
        hint = " (a float is a binary fraction: pass a Decimal)" if isinstance(value, float) else ""
        raise _Refused(f"it takes Decimal or int, not {type(value).__name__}{hint}")
    if not value.is_finite():
        if dialect == "postgresql":
            return value  # numeric has NaN and +-Infinity
        raise _Refused(f"{dialect} DECIMAL has no NaN or infinity")
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if any(digits):
        text = "".join(map(str, digits))
        kept = text.rstrip("0")
        exponent += len(text) - len(kept)  # 1.500 needs one digit after the point, not three
        significant = len(kept)
        whole = max(significant + exponent, 0)  # digits before the point
    else:
        exponent, significant, whole = 0, 1, 0
    if ctype.scale is not None and exponent < -ctype.scale:
        raise _Refused(
            f"it has {-exponent} digits after the point and the column keeps {ctype.scale}: "
            "the database would round it"
        )
    if ctype.precision is not None and whole > ctype.precision - (ctype.scale or 0):
        raise _Refused(f"it has {whole} digits before the point, the column holds fewer")
    if dialect != "sqlite":
        return value
    # SQLite stores numbers as 64-bit integers or floats (NUMERIC affinity turns decimal text
    # into a float of 15 digits): only what either holds exactly is accepted.
    if exponent >= 0 and int(value) in _INT64:
        return int(value)
    if significant <= 15 and abs(value) < decimal.Decimal("1e308"):
        return float(value)
    raise _Refused("SQLite keeps 15 significant digits of a decimal (a 64-bit float)")


def _text(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, str):
        raise _expected("str", value)
    return value


def _bytes(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _expected("bytes", value)
    return bytes(value)


def _date(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise _expected("datetime.date", value)
    return value.isoformat() if dialect == "sqlite" else value


def _fits_fraction(ctype: ColumnType, value: dt.time | dt.datetime) -> None:
    if value.microsecond % 10 ** (6 - ctype.fraction):
        raise _Refused(
            f"the column keeps {ctype.fraction} fractional-second digits, the value has "
            "more: the database would round or cut them"
        )


def _time(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, dt.time):
        raise _expected("datetime.time", value)
    if value.utcoffset() is not None:
        raise _Refused("a TIME column holds no time zone: pass a naive time")
    _fits_fraction(ctype, value)
    return value.isoformat() if dialect == "sqlite" else value


def _datetime(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, dt.datetime):
        raise _expected("datetime.datetime", value)
    if value.utcoffset() is not None:
        raise _Refused(
            "the column holds wall-clock times without a zone and would drop the offset; "
            "store instants in timestamptz (PostgreSQL), TIMESTAMP (MySQL) or TIMESTAMPTZ "
            "(SQLite), or pass a naive datetime"
        )
    _fits_fraction(ctype, value)
    return value.isoformat(" ") if dialect == "sqlite" else value


def _instant(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, dt.datetime):
        raise _expected("an aware datetime.datetime", value)
    if value.utcoffset() is None:
        raise _Refused(
            "the column holds instants and a naive datetime does not say which: pass an aware "
            "one, e.g. datetime.now(timezone.utc)"
        )
    utc = value.astimezone(dt.UTC)
    _fits_fraction(ctype, utc)
    # psycopg sends the offset, and PyMySQL's encoder (`mysql_conversions`) converts to UTC.
    return utc.isoformat(" ") if dialect == "sqlite" else value


def _uuid(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, uuid.UUID):
        raise _expected("uuid.UUID", value)
    return str(value) if dialect == "sqlite" else value


def _json(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, dict | list):
        raise _expected("dict or list (the JSON value, not its text)", value)
    return _json_text(value)


def _json_text(value: Any) -> str:
    """The canonical JSON text of a dict or list (sorted keys, no spaces), so that equal
    values are equal text (SQLite compares JSON as text). Raises `_Refused` for what JSON
    would give back changed: tuples (lists), non-str keys (strings), NaN, other types."""
    _check_json(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_json(value: Any) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused("JSON has no NaN or infinity")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(f"JSON object keys are strings, not {type(key).__name__}")
            _check_json(item)
        return
    raise _Refused(f"JSON cannot hold {type(value).__name__} (and would not give it back)")


def _array(dialect: str, ctype: ColumnType, value: Any) -> Any:
    if not isinstance(value, list):
        raise _expected("list", value)
    return value


def _other(dialect: str, ctype: ColumnType, value: Any) -> Any:
    # Outside the contract the driver decides, for the scalars every driver binds the same.
    passed: tuple[type, ...] = (str, int, float, bytes)
    if dialect != "sqlite":
        passed += (decimal.Decimal, dt.timedelta)
    if isinstance(value, bool) or not isinstance(value, passed):
        names = ", ".join(t.__name__ for t in passed)
        raise _Refused(
            f"the column's type is outside twostep's type contract (README 'Types'), which "
            f"passes only {names} to it, not {type(value).__name__}"
        )
    if isinstance(value, float):
        return _float(dialect, ctype, value)
    return value


_CHECKS: dict[Kind, Callable[[str, ColumnType, Any], Any]] = {
    Kind.BOOL: _bool,
    Kind.INT: _int,
    Kind.FLOAT: _float,
    Kind.DECIMAL: _decimal,
    Kind.TEXT: _text,
    Kind.BYTES: _bytes,
    Kind.DATE: _date,
    Kind.TIME: _time,
    Kind.DATETIME: _datetime,
    Kind.INSTANT: _instant,
    Kind.UUID: _uuid,
    Kind.JSON: _json,
    Kind.ARRAY: _array,
    Kind.OTHER: _other,
}


# -- values read -------------------------------------------------------------------------------


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


# -- PyMySQL hooks -----------------------------------------------------------------------------

#: Run on every new MySQL session: TIMESTAMP columns are read and written in UTC.
MYSQL_SESSION_SETUP = "SET time_zone = '+00:00'"

_DAY = dt.timedelta(days=1)


def _escape_datetime(value: dt.datetime, mapping: Any = None) -> str:
    if value.utcoffset() is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return _my.escape_datetime(value, mapping)


def _escape_uuid(value: uuid.UUID, mapping: Any = None) -> str:
    return _my.escape_str(str(value), mapping)


def _time_of_day(text: str) -> dt.time | dt.timedelta | str:
    # A TIME column can hold -838:59:59..838:59:59; a value outside one day stays a timedelta.
    value = _my.convert_timedelta(text)
    if isinstance(value, dt.timedelta) and dt.timedelta(0) <= value < _DAY:
        return (dt.datetime.min + value).time()
    return value


def _utc_timestamp(text: str) -> dt.datetime | str:
    value = _my.convert_datetime(text)
    if isinstance(value, dt.datetime):  # not the zero date, which stays text
        return value.replace(tzinfo=dt.UTC)
    return value


def mysql_conversions(base: dict[Any, Any] | None = None) -> dict[Any, Any]:
    """PyMySQL's `conv` for a twostep session: its defaults (or `base`, a user's `conv`
    option), with the contract's encoders and decoders on top."""
    conv = dict(_my.conversions if base is None else base)
    conv[dt.datetime] = _escape_datetime
    conv[uuid.UUID] = _escape_uuid
    conv[FIELD_TYPE.TIME] = _time_of_day
    conv[FIELD_TYPE.TIMESTAMP] = _utc_timestamp
    return conv
