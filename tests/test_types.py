"""The type contract (README "Types"), table-driven, on real PostgreSQL, MariaDB and SQLite.

Every accepted value is written through a model, read back by key, and found again with
`where()`; it must come back equal and of the Python type written (an aware datetime: the
same instant, in UTC). Every refused value raises `UnsupportedValue` naming model and column,
and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from twostep.client import (
    ActiveRecord,
    ConfigurationError,
    Connection,
    ConnectionManager,
    F,
    UnsupportedValue,
)
from twostep.client._types import postgres_column, to_db
from twostep.testing import DIALECTS, fresh_config

PG, MY, LITE = DIALECTS
EVERYWHERE = DIALECTS

DDL = {
    PG: "CREATE TABLE samples (id INT PRIMARY KEY, flag BOOLEAN, n BIGINT, x DOUBLE PRECISION,"
    " x4 REAL, amount NUMERIC(65,30), price NUMERIC(10,2), label TEXT, code VARCHAR(20),"
    " raw BYTEA, day DATE, at_time TIME, wall TIMESTAMP, wall0 TIMESTAMP(0), instant TIMESTAMPTZ,"
    " token UUID, doc JSONB, doc_text JSON, tags TEXT[], span INTERVAL)",
    MY: "CREATE TABLE samples (id INT PRIMARY KEY, flag BOOLEAN, n BIGINT, x DOUBLE, x4 FLOAT,"
    " amount DECIMAL(65,30), price DECIMAL(10,2), label TEXT, code VARCHAR(20), raw BLOB,"
    " day DATE, at_time TIME(6), wall DATETIME(6), wall0 DATETIME, instant TIMESTAMP(6) NULL"
    " DEFAULT NULL, token UUID, doc JSON, doc_text JSON, tags JSON, span YEAR)"
    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    LITE: "CREATE TABLE samples (id INTEGER PRIMARY KEY, flag BOOLEAN, n INTEGER, x REAL,"
    " x4 REAL, amount DECIMAL(65,30), price DECIMAL(10,2), label TEXT, code VARCHAR(20),"
    " raw BLOB, day DATE, at_time TIME, wall DATETIME, wall0 DATETIME(0), instant TIMESTAMPTZ,"
    " token UUID, doc JSON, doc_text JSON, tags JSON, span)",
}


class Sample(ActiveRecord):
    __connection__ = "types"


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """The connection 'types' on a fresh database of the dialect the test is parametrized
    with (`indirect`), with the table samples."""
    config = fresh_config(request, request.param, tmp_path / "types.db")
    connection = ConnectionManager.configure("types", config)
    connection.execute(DDL[request.param])
    request.addfinalizer(ConnectionManager.close_all)
    return connection


@dataclass(frozen=True)
class Case:
    column: str
    value: Any
    on: tuple[str, ...] = EVERYWHERE

    def __str__(self) -> str:
        return f"{self.column}={self.value!r}"[:60]


def on_their_dialects(cases: list[Case]) -> list[Any]:
    """(dialect, case) parameters: each case on the dialects it names."""
    return [pytest.param(d, case, id=f"{d}-{case}") for case in cases for d in case.on]


each_dialect = pytest.mark.parametrize("db", DIALECTS, indirect=True)


KOLKATA = dt.timezone(dt.timedelta(hours=5, minutes=30))
DOC = {"b": [1, 2.5, None, True, "ü"], "a": {"nested": {"deep": []}}}

ROUND_TRIPS = [
    Case("flag", True),
    Case("flag", False),
    Case("n", 0),
    Case("n", -(2**63)),
    Case("n", 2**63 - 1),
    Case("x", 0.1),
    Case("x", -1.5e300),
    Case("x", 2**53),  # an exact int is a float column's value; it comes back as a float
    Case("x", float("inf"), on=(PG, LITE)),
    Case("x4", 0.5),
    Case("x4", 123.25),
    Case("amount", Decimal("1.123456789012345678901234567890"), on=(PG, MY)),
    Case("amount", Decimal("-98765.4321")),
    Case("price", Decimal("19.99")),
    Case("price", Decimal("-0.01")),
    Case("price", Decimal("5")),  # comes back 5.00: equal, and a Decimal
    Case("price", 7),
    Case("label", "Ωμέγα 日本語 😀 ' \" \\ %s ?"),
    Case("label", ""),
    Case("code", "  padded  "),
    Case("raw", b"\x00\xff binary \x00"),
    Case("day", dt.date(2024, 2, 29)),
    Case("at_time", dt.time(12, 34, 56, 789)),
    Case("at_time", dt.time(0, 0)),
    Case("at_time", dt.time(23, 59, 59, 999999)),
    Case("wall", dt.datetime(2024, 1, 2, 12, 34, 56, 123456)),
    Case("wall0", dt.datetime(1999, 12, 31, 23, 59, 59)),
    Case("instant", dt.datetime(2024, 1, 2, 12, 34, 56, tzinfo=KOLKATA)),
    Case("instant", dt.datetime(2030, 6, 1, 0, 0, 0, 500, tzinfo=dt.UTC)),
    Case("token", uuid.UUID("6f1c2b9e-8d4a-4e3b-9c1d-2a3b4c5d6e7f")),
    Case("doc", DOC),
    Case("doc", [1, "two", {"three": 3.0}]),
    Case("doc", {}),
    Case("doc_text", DOC),
    Case("tags", ["a", "b"]),
    Case("span", dt.timedelta(days=1, seconds=5), on=(PG,)),  # PostgreSQL interval: outside
    Case("span", 2024, on=(MY, LITE)),  # MariaDB YEAR, SQLite untyped: outside the contract
]


def _same(written: Any, read: Any) -> bool:
    if isinstance(written, int) and not isinstance(written, bool) and isinstance(read, float):
        return float(written) == read  # int into a float column
    if isinstance(written, int) and isinstance(read, Decimal) and not isinstance(written, bool):
        return Decimal(written) == read  # int into a decimal column
    if isinstance(written, dt.datetime) and written.utcoffset() is not None:
        return read == written and read.utcoffset() == dt.timedelta(0)  # same instant, UTC
    return type(read) is type(written) and read == written


@pytest.mark.parametrize(("db", "case"), on_their_dialects(ROUND_TRIPS), indirect=["db"])
def test_every_type_round_trips_and_where_finds_it(db: Connection, case: Case) -> None:
    Sample.create(id=1, **{case.column: case.value})
    Sample.create(id=2)  # NULL everywhere: where() must not match it
    read = getattr(Sample.where(id=1).first(), case.column)
    assert _same(case.value, read), f"wrote {case.value!r}, read {read!r}"
    assert [s.id for s in Sample.where(**{case.column: case.value})] == [1]
    # The value read back is as good as the one written: it saves and matches unchanged.
    row = Sample.where(id=2).first()
    setattr(row, case.column, read)
    row.save()
    assert [s.id for s in Sample.where(**{case.column: read}).order_by("id")] == [1, 2]
    assert [s.id for s in Sample.where(**{case.column: None})] == []


REFUSED = [
    Case("flag", 1),
    Case("flag", "true"),
    Case("n", True),
    Case("n", 1.5),
    Case("n", Decimal("1")),
    Case("n", "5"),
    Case("n", 2**63, on=(LITE,)),
    Case("x", float("nan"), on=(MY, LITE)),  # SQLite stored NaN as NULL
    Case("x", float("inf"), on=(MY,)),
    Case("x", Decimal("0.1")),
    Case("x", 2**53 + 1),
    Case("x4", 0.1, on=(PG, MY)),  # a 4-byte float holds 0.100000001490116...
    Case("x4", 16777215.0, on=(PG, MY)),  # exact in 4 bytes, but MySQL prints 6 digits
    Case("amount", Decimal("1." + "1234567890" * 4)),  # MariaDB rounded it to 30 digits
    Case("amount", Decimal("1.1234567890123456"), on=(LITE,)),  # 17 significant digits
    Case("amount", Decimal("NaN"), on=(MY, LITE)),
    Case("price", Decimal("2.345")),
    Case("price", Decimal("123456789")),
    Case("price", 0.1),
    Case("label", 5),
    Case("label", ["x"]),  # PostgreSQL stored '{x}', MariaDB 'x'
    Case("label", {"a": 1}),
    Case("label", b"bytes"),
    Case("code", uuid.UUID(int=1)),
    Case("raw", "text"),
    Case("day", dt.datetime(2024, 1, 1)),
    Case("day", "2024-01-01"),
    Case("at_time", dt.time(1, 2, 3, tzinfo=dt.UTC)),
    Case("at_time", dt.timedelta(hours=1)),
    Case("wall", dt.datetime(2024, 1, 2, 12, 34, 56, tzinfo=KOLKATA)),  # MariaDB shifted it
    Case("wall0", dt.datetime(2024, 1, 1, 0, 0, 0, 500000)),
    Case("instant", dt.datetime(2024, 1, 2, 12, 34, 56)),
    Case("token", "6f1c2b9e-8d4a-4e3b-9c1d-2a3b4c5d6e7f"),
    Case("doc", json.dumps(DOC)),  # PostgreSQL returned a dict, the others the str
    Case("doc", 42),
    Case("doc", {"a": float("nan")}),
    Case("doc", {1: "a"}),
    Case("doc", {"a": ("t", "u")}),
    Case("doc", {"a": dt.date(2024, 1, 1)}),
    Case("tags", ("a", "b")),
    Case("span", object()),
    Case("span", {"a": 1}),
    Case("span", True),
    Case("span", Decimal("1.5"), on=(LITE,)),
]


@pytest.mark.parametrize(("db", "case"), on_their_dialects(REFUSED), indirect=["db"])
def test_a_value_the_column_would_change_is_refused_naming_model_and_column(
    db: Connection, case: Case
) -> None:
    with pytest.raises(UnsupportedValue, match=rf"^Sample\.{case.column} \(") as info:
        Sample.create(id=1, **{case.column: case.value})
    assert (info.value.model, info.value.column) == ("Sample", case.column)
    assert Sample.count() == 0  # nothing was sent
    Sample.create(id=1)
    for write in (
        lambda: Sample.where(id=1).update(**{case.column: case.value}),
        lambda: Sample.insert_or_update(id=1, **{case.column: case.value}),
        lambda: Sample.bulk_insert_or_update([{"id": 2, case.column: case.value}]),
    ):
        with pytest.raises(UnsupportedValue):
            write()
    if not isinstance(case.value, list | tuple):  # a list or tuple in where() means IN
        with pytest.raises(UnsupportedValue):
            Sample.where(**{case.column: case.value}).all()
    assert [s.to_dict() for s in Sample.all()] == [Sample.where(id=1).first().to_dict()]
    assert Sample.count() == 1


@each_dialect
def test_values_in_a_column_expression_must_fit_the_column(db: Connection) -> None:
    Sample.create(id=1, price=Decimal("10.00"), n=1)
    with pytest.raises(UnsupportedValue, match=r"Sample\.price .*digits after the point"):
        Sample.where(id=1).update(price=F("price") - Decimal("0.001"))
    with pytest.raises(UnsupportedValue, match=r"Sample\.n .*takes int"):
        Sample.where(id=1).update(n=F("n") + 0.5)
    with pytest.raises(UnsupportedValue, match="numeric column"):
        Sample.where(id=1).update(label=F("label") + "x")
    assert Sample.where(id=1).update(price=F("price") * 2 - Decimal("0.01")) == 1
    assert Sample.where(id=1).first().price == Decimal("19.99")


@each_dialect
def test_where_on_a_json_column_compares_one_json_value(db: Connection) -> None:
    Sample.create(id=1, doc={"a": 1, "b": [1, 2]})
    Sample.create(id=2, doc=[{"a": 1}])
    assert [s.id for s in Sample.where(doc={"b": [1, 2], "a": 1})] == [1]  # key order aside
    assert [s.id for s in Sample.where(doc=[{"a": 1}])] == [2]
    assert Sample.where(doc={"a": 2}).count() == 0
    with pytest.raises(ValueError, match="IN is not supported"):
        Sample.where(doc=({"a": 1}, [1])).all()


@each_dialect
def test_an_upsert_needs_a_unique_key_on_every_dialect(db: Connection) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot upsert on \(label\).*unique keys: id"):
        Sample.insert_or_update(id=1, label="x", conflict_keys=["label"])
    with pytest.raises(ConfigurationError, match="cannot upsert"):
        Sample.bulk_insert_or_update([{"id": 1, "label": "x"}], conflict_keys=["id", "label"])
    assert Sample.count() == 0
    Sample.insert_or_update(id=1, label="x", conflict_keys=["id"])
    Sample.insert_or_update(id=1, label="y")
    assert [(s.id, s.label) for s in Sample.all()] == [(1, "y")]


@pytest.mark.parametrize("db", [MY, LITE], indirect=True)
def test_a_stored_value_of_the_wrong_kind_is_an_error_naming_the_column(db: Connection) -> None:
    # Written by other SQL: a boolean column holding 5 (MariaDB's TINYINT(1), SQLite's
    # BOOLEAN; PostgreSQL's boolean cannot hold it) is not silently read as True.
    db.execute("INSERT INTO samples (id, flag) VALUES (1, 5)")
    with pytest.raises(UnsupportedValue, match=r"Sample\.flag .*stored value 5"):
        Sample.first()


# What each session is told at connect, which twostep's own setting must override.
FOREIGN_ZONE = {
    PG: {"options": "-c TimeZone=Asia/Kolkata"},
    MY: {"init_command": "SET time_zone = '+05:30'"},
}


@pytest.mark.parametrize("db", [PG, MY], indirect=True)
def test_instants_come_back_in_utc_whatever_zone_the_session_was_given(db: Connection) -> None:
    written = dt.datetime(2024, 1, 2, 12, 34, 56, tzinfo=KOLKATA)
    Sample.create(id=1, instant=written)
    s = db.settings
    ConnectionManager.configure(
        "types",
        {
            "driver": db.dialect.name,
            "host": s.host,
            "port": s.port,
            "database": s.database,
            "username": s.username,
            "password": s.password,
            "options": FOREIGN_ZONE[db.dialect.name],
        },
    )
    read = Sample.first().instant
    assert read == written and read.utcoffset() == dt.timedelta(0)
    assert read.replace(tzinfo=None) == dt.datetime(2024, 1, 2, 7, 4, 56)
    assert Sample.where(instant=written).count() == 1


@pytest.mark.parametrize("db", [MY], indirect=True)
def test_mariadb_time_outside_one_day_stays_a_timedelta(db: Connection) -> None:
    db.execute("INSERT INTO samples (id, at_time) VALUES (1, '30:00:00'), (2, '-01:00:00')")
    assert [s.at_time for s in Sample.order_by("id")] == [
        dt.timedelta(hours=30),
        dt.timedelta(hours=-1),
    ]


@pytest.mark.parametrize(
    ("declared", "value", "fits"),
    [
        ("numeric(2,2)", Decimal("0.000"), True),  # zero needs no digits, whatever its exponent
        ("numeric(2,2)", Decimal("0.99"), True),
        ("numeric(2,2)", Decimal("1.00"), False),
        ("numeric(5,1)", Decimal("1.500"), True),  # trailing zeros are not digits to keep
        ("numeric(5,1)", Decimal("1.05"), False),
        ("numeric(5,-2)", Decimal("1E+2"), True),  # PostgreSQL: rounds to hundreds
        ("numeric(5,-2)", Decimal("150"), False),
        ("numeric", Decimal("1." + "1" * 500), True),  # unbounded
        ("numeric(65,30)", Decimal("-0E-40"), True),
    ],
)
def test_decimal_digits_are_counted_without_rounding(declared: str, value: Any, fits: bool) -> None:
    column = postgres_column("numeric", "N", declared)
    if fits:
        assert to_db(PG, column, value, model="M", column="c") == value
    else:
        with pytest.raises(UnsupportedValue, match=r"^M\.c \(numeric"):
            to_db(PG, column, value, model="M", column="c")
