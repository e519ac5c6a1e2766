"""`insert_or_update()` with the row as a positional dict (the seed's
`AnalyticsUserData.insert_or_update(analytics_data, conflict_keys=['user_id'])`) as well as
keyword fields, on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from typing import Any

import pytest

from twostep.client import ActiveRecord, Connection, ConnectionManager, UnknownColumn
from twostep.testing import DIALECTS, fresh_config

KEY = {
    "postgresql": "id SERIAL PRIMARY KEY",
    "mysql": "id INT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "id INTEGER PRIMARY KEY",
}


class AnalyticsUserData(ActiveRecord):  # table analytics_user_data
    __connection__ = "main"


def configure(request: pytest.FixtureRequest, dialect: str, tmp_path: Any) -> Connection:
    connection = ConnectionManager.configure(
        "main", fresh_config(request, dialect, tmp_path / "main.db")
    )
    connection.execute(
        f"CREATE TABLE analytics_user_data ({KEY[dialect]}, user_id INT NOT NULL UNIQUE,"
        " visits INT, segment VARCHAR(20))"
    )
    request.addfinalizer(ConnectionManager.close_all)
    return connection


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    return configure(request, request.param, tmp_path)


@pytest.fixture
def lite(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """The refusals happen before anything is sent: one dialect shows them."""
    return configure(request, "sqlite", tmp_path)


def stored(db: Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT user_id, visits, segment FROM analytics_user_data ORDER BY user_id")


def test_a_positional_dict_inserts_then_updates_on_the_conflict_keys(db: Connection) -> None:
    analytics_data = {"user_id": 7, "visits": 1, "segment": "new"}
    inserted = AnalyticsUserData.insert_or_update(analytics_data, conflict_keys=["user_id"])
    assert (inserted.user_id, inserted.visits, inserted.segment) == (7, 1, "new")
    assert inserted.id is not None  # the generated key, read back
    updated = AnalyticsUserData.insert_or_update(
        {"user_id": 7, "visits": 2, "segment": "regular"}, conflict_keys=["user_id"]
    )
    assert updated.visits == 2
    assert stored(db) == [(7, 2, "regular")]
    assert analytics_data == {"user_id": 7, "visits": 1, "segment": "new"}  # not changed


def test_the_dict_and_the_keyword_form_write_the_same_row(db: Connection) -> None:
    AnalyticsUserData.insert_or_update({"user_id": 1, "visits": 5}, conflict_keys="user_id")
    AnalyticsUserData.insert_or_update(user_id=2, visits=5, conflict_keys="user_id")
    assert stored(db) == [(1, 5, None), (2, 5, None)]


def test_a_query_on_another_connection_takes_the_dict_form_too(
    db: Connection, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    archive = ConnectionManager.configure(
        "archive", {"driver": "sqlite", "database": str(tmp_path / "archive.db")}
    )
    archive.execute(
        "CREATE TABLE analytics_user_data (id INTEGER PRIMARY KEY, user_id INT NOT NULL UNIQUE,"
        " visits INT, segment VARCHAR(20))"
    )
    AnalyticsUserData.using("archive").insert_or_update({"user_id": 3}, conflict_keys=["user_id"])
    assert stored(archive) == [(3, None, None)]
    assert stored(db) == []


def test_neither_both_or_a_non_mapping_row_is_a_type_error(lite: Connection) -> None:
    with pytest.raises(TypeError, match="got neither"):
        AnalyticsUserData.insert_or_update(conflict_keys=["user_id"])
    with pytest.raises(TypeError, match=r"not both \(keywords given: visits\)"):
        AnalyticsUserData.insert_or_update({"user_id": 1}, visits=2, conflict_keys=["user_id"])
    with pytest.raises(TypeError, match="as a dict, not list"):
        AnalyticsUserData.insert_or_update([("user_id", 1)], conflict_keys=["user_id"])
    assert stored(lite) == []


def test_a_dict_with_a_non_string_key_or_an_unknown_field_is_a_type_error(
    lite: Connection,
) -> None:
    with pytest.raises(TypeError, match="field names are strings, not 1"):
        AnalyticsUserData.insert_or_update({"user_id": 1, 1: "x"}, conflict_keys=["user_id"])
    with pytest.raises(TypeError, match=r"AnalyticsUserData has no column 'visit'.*visits"):
        AnalyticsUserData.insert_or_update({"user_id": 1, "visit": 2}, conflict_keys=["user_id"])
    # The same error is an AttributeError where an attribute is read, as it always was.
    with pytest.raises(UnknownColumn) as info:
        AnalyticsUserData.insert_or_update(user_id=1, visit=2, conflict_keys=["user_id"])
    assert isinstance(info.value, AttributeError)
    assert stored(lite) == []


def test_an_empty_dict_is_refused_as_a_row_without_values(lite: Connection) -> None:
    with pytest.raises(ValueError, match="at least one column value"):
        AnalyticsUserData.insert_or_update({}, conflict_keys=["user_id"])
