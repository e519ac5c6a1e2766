"""Which table a model uses: Rails' convention (`inflection.tableize`) unless `__tablename__`
says otherwise, on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from typing import Any

import pytest

from twostep.client import ActiveRecord, Connection, ConnectionManager, InvalidIdentifier
from twostep.client._model import table_name_for
from twostep.testing import DIALECTS, fresh_config


@pytest.mark.parametrize(
    ("class_name", "table"),
    [
        # The names: the old rule gave user_analyticses, persons, analytics_user_datas.
        ("UserAnalytics", "user_analytics"),
        ("Person", "people"),
        ("AnalyticsUserData", "analytics_user_data"),
        ("User", "users"),
        ("Quiz", "quizzes"),  # the old rule: quizes
        ("Equipment", "equipment"),  # uncountable
        # Names the old rule got right keep their tables.
        ("Order", "orders"),
        ("OrderItem", "order_items"),
        ("Category", "categories"),
        ("Address", "addresses"),
        ("Box", "boxes"),
        ("Match", "matches"),
        ("Day", "days"),
        ("Status", "statuses"),
        ("HTTPRequest", "http_requests"),
        ("Invoice2Line", "invoice2_lines"),
    ],
)
def test_table_name_follows_the_rails_inflector(class_name: str, table: str) -> None:
    assert table_name_for(class_name) == table


class Person(ActiveRecord):
    __connection__ = "main"


class UserAnalytics(ActiveRecord):
    __connection__ = "main"


class AnalyticsUserData(ActiveRecord):
    __connection__ = "main"


class Staff(ActiveRecord):
    __connection__ = "main"
    __tablename__ = "employees"


def test_a_model_class_gets_its_table_name_when_defined() -> None:
    assert Person.__tablename__ == "people"
    assert UserAnalytics.__tablename__ == "user_analytics"
    assert AnalyticsUserData.__tablename__ == "analytics_user_data"
    assert Staff.__tablename__ == "employees"  # explicit wins


def test_a_subclass_is_named_after_itself_not_its_parent() -> None:
    class Admin(Person):
        pass

    class Manager(Staff):  # Staff's explicit name is not inherited either
        pass

    assert Admin.__tablename__ == "admins"
    assert Manager.__tablename__ == "managers"


def test_a_malformed_tablename_is_refused_at_class_definition() -> None:
    with pytest.raises(InvalidIdentifier):

        class Bad(ActiveRecord):
            __tablename__ = "people; DROP TABLE people"


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    connection = ConnectionManager.configure(
        "main", fresh_config(request, request.param, tmp_path / "main.db")
    )
    for table in ("people", "user_analytics", "analytics_user_data", "employees"):
        connection.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(50))")
    request.addfinalizer(ConnectionManager.close_all)
    return connection


def test_models_read_and_write_the_tables_so_named(db: Connection) -> None:
    for number, model in enumerate((Person, UserAnalytics, AnalyticsUserData, Staff), 1):
        model.create(id=number, name=model.__name__)
    assert db.execute("SELECT name FROM people") == [("Person",)]
    assert db.execute("SELECT name FROM user_analytics") == [("UserAnalytics",)]
    assert db.execute("SELECT name FROM analytics_user_data") == [("AnalyticsUserData",)]
    assert [s.name for s in Staff.all()] == ["Staff"]
