"""Set-based `Query.update(**values)` and `Query.delete()` in the seed's call forms
(`AnalyticsUserData.where(user_id=...).delete()`, `User.where(id=...).delete()`): one
statement with bound parameters returning the affected row count, no hooks, outside any
transaction, inside `Transaction(conn)` and inside `global_transaction()`, on real
PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from twostep.client import (
    ActiveRecord,
    Connection,
    ConnectionManager,
    Transaction,
    TwostepError,
    global_transaction,
)
from twostep.testing import DIALECTS, fresh_config


class User(ActiveRecord):
    __connection__ = "main"

    hooks: list[str] = []  # noqa: RUF012 - shared on purpose, reset by the fixture

    def after_save(self) -> None:
        User.hooks.append("after_save")

    def after_destroy(self) -> None:
        User.hooks.append("after_destroy")


class AnalyticsUserData(ActiveRecord):
    __connection__ = "analytics"


def create_tables(connection: Connection) -> None:
    connection.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100), age INT)")
    connection.execute(
        "CREATE TABLE analytics_user_data (user_id INT PRIMARY KEY, visits INT NOT NULL)"
    )


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """'main' (users) and 'analytics' (analytics_user_data): one fresh database of a dialect."""
    config = fresh_config(request, request.param, tmp_path / "main.db")
    connection = ConnectionManager.configure("main", config)
    ConnectionManager.configure("analytics", config)
    create_tables(connection)
    request.addfinalizer(ConnectionManager.close_all)
    for i in range(1, 5):
        connection.execute("INSERT INTO users (id, name, age) VALUES (?, ?, ?)", (i, f"u{i}", i))
        connection.execute(
            "INSERT INTO analytics_user_data (user_id, visits) VALUES (?, ?)", (i, i * 10)
        )
    User.hooks = []
    return connection


def users(connection: Connection) -> list[tuple[Any, ...]]:
    return connection.execute("SELECT id, name, age FROM users ORDER BY id")


def test_update_and_delete_return_the_affected_row_count_as_an_int(db: Connection) -> None:
    updated = User.where("age >= ?", 3).update(name="old")
    assert updated == 2 and type(updated) is int
    deleted = AnalyticsUserData.where(user_id=2).delete()
    assert deleted == 1 and type(deleted) is int
    assert User.where(id=99).delete() == 0
    assert users(db) == [(1, "u1", 1), (2, "u2", 2), (3, "old", 3), (4, "old", 4)]
    assert [a.user_id for a in AnalyticsUserData.order_by("user_id")] == [1, 3, 4]


def test_values_and_conditions_are_bound_never_pasted_into_the_sql(db: Connection) -> None:
    hostile = "x'); DELETE FROM users; --"
    assert User.where(id=1).update(name=hostile) == 1
    assert User.where(name=hostile).delete() == 1
    assert User.where(name=hostile).count() == 0
    assert [u.id for u in User.order_by("id")] == [2, 3, 4]


def test_update_and_delete_run_no_hooks(db: Connection) -> None:
    User.where(id=1).update(age=10)
    User.where(id=1).delete()
    assert User.hooks == []


def test_an_unconditioned_query_updates_and_deletes_every_row(db: Connection) -> None:
    assert User.query().update(age=0) == 4
    assert {u.age for u in User.all()} == {0}
    assert User.query().delete() == 4
    assert User.count() == 0


def test_inside_a_local_transaction_they_commit_with_it(db: Connection) -> None:
    with Transaction(db):
        assert User.where(id=1).update(name="renamed") == 1
        assert User.where(id=[2, 3]).delete() == 2
        assert User.count() == 2  # seen inside, on the transaction's session
    assert users(db) == [(1, "renamed", 1), (4, "u4", 4)]


def test_inside_a_local_transaction_they_roll_back_with_it(db: Connection) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Transaction(db):
            User.where(id=1).update(name="renamed")
            User.where(id=[2, 3]).delete()
            raise RuntimeError("boom")
    assert users(db) == [(1, "u1", 1), (2, "u2", 2), (3, "u3", 3), (4, "u4", 4)]


def test_inside_a_transaction_on_another_connection_they_are_refused_unsent(
    db: Connection, tmp_path: Any
) -> None:
    other = ConnectionManager.configure(
        "other", {"driver": "sqlite", "database": str(tmp_path / "other.db")}
    )
    with Transaction(other):
        with pytest.raises(TwostepError, match="model User uses connection 'main'"):
            User.where(id=1).update(name="x")
        with pytest.raises(TwostepError, match="model User uses connection 'main'"):
            User.where(id=1).delete()
    assert users(db)[0] == (1, "u1", 1)


# -- across PostgreSQL and MariaDB ---------------------------------------------------------------


@pytest.fixture
def two_databases(
    pg_config: dict[str, Any], maria_config: dict[str, Any]
) -> Iterator[tuple[Connection, Connection]]:
    """'main' (users) on PostgreSQL, 'analytics' (analytics_user_data) on MariaDB."""
    main = ConnectionManager.configure("main", pg_config)
    analytics = ConnectionManager.configure("analytics", maria_config)
    main.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100), age INT)")
    analytics.execute(
        "CREATE TABLE analytics_user_data (user_id INT PRIMARY KEY, visits INT NOT NULL)"
        " ENGINE=InnoDB"
    )
    for i in (1, 2):
        main.execute("INSERT INTO users (id, name, age) VALUES (?, ?, ?)", (i, f"u{i}", i))
        analytics.execute("INSERT INTO analytics_user_data (user_id, visits) VALUES (?, 1)", (i,))
    yield main, analytics
    ConnectionManager.close_all()


def delete_user(user_id: int) -> tuple[int, int]:
    """The seed's cross-database delete: the user and its analytics row."""
    return (
        User.where(id=user_id).delete(),
        AnalyticsUserData.where(user_id=user_id).delete(),
    )


def test_inside_a_global_transaction_both_databases_commit(
    two_databases: tuple[Connection, Connection], coordinator: Any
) -> None:
    with global_transaction(coordinator=coordinator.address, timeout=30):
        assert delete_user(1) == (1, 1)
        assert AnalyticsUserData.where(user_id=2).update(visits=5) == 1
    assert [u.id for u in User.all()] == [2]
    assert [(a.user_id, a.visits) for a in AnalyticsUserData.all()] == [(2, 5)]


def test_inside_a_global_transaction_both_databases_roll_back(
    two_databases: tuple[Connection, Connection], coordinator: Any
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with global_transaction(coordinator=coordinator.address, timeout=30):
            assert delete_user(1) == (1, 1)
            User.where(id=2).update(name="renamed")
            raise RuntimeError("boom")
    assert [(u.id, u.name) for u in User.order_by("id")] == [(1, "u1"), (2, "u2")]
    assert AnalyticsUserData.count() == 2
