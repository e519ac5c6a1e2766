"""Values sent: `to_db`, which every value a model writes or compares passes, and the check
per `Kind` behind it that refuses what the column would store changed."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any

from .._errors import UnsupportedValue
from .kinds import ColumnType, Kind

__all__ = ["to_db"]


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
