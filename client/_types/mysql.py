"""MySQL's and MariaDB's side of the type contract: their columns classified from
information_schema, and PyMySQL's `conv` for a twostep session (encoders that send an aware
datetime as UTC and a UUID as text, decoders for TIME and TIMESTAMP) with the session setup
that makes TIMESTAMP UTC."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pymysql import converters as _my
from pymysql.constants import FIELD_TYPE

from .kinds import ColumnType, Kind, with_limits

__all__ = ["MYSQL_SESSION_SETUP", "mysql_column", "mysql_conversions"]

# -- classifying columns -----------------------------------------------------------------------

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
    return with_limits(kind, column_type, single=data_type == "float", fraction=0)


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
