"""Lifecycle hooks (`before_save`, `after_save`, `before_destroy`, `after_destroy`) run inside
the transaction of their write: the active `Transaction` or `global_transaction()`, else a
local transaction of their own, so a hook that raises rolls the write back. On real
PostgreSQL, MariaDB and SQLite, and across PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

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

KEY = {
    "postgresql": "id SERIAL PRIMARY KEY",
    "mysql": "id INT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "id INTEGER PRIMARY KEY",
}


class HookFailed(Exception):
    pass


class Audit(ActiveRecord):  # table audits: what the hooks wrote
    __connection__ = "main"


class Article(ActiveRecord):
    """Every hook writes an audit row, then raises if `fail_in` names it."""

    __connection__ = "main"

    fail_in: ClassVar[str | None] = None
    calls: ClassVar[list[str]] = []

    def _hook(self, name: str) -> None:
        Article.calls.append(name)
        Audit.create(event=f"{name} {self.title}")
        if Article.fail_in == name:
            raise HookFailed(name)

    def before_save(self) -> None:
        self.slug = self.title.lower().replace(" ", "-")  # written by the same statement
        self._hook("before_save")

    def after_save(self) -> None:
        self._hook("after_save")

    def before_destroy(self) -> None:
        self._hook("before_destroy")

    def after_destroy(self) -> None:
        self._hook("after_destroy")


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    connection = ConnectionManager.configure(
        "main", fresh_config(request, request.param, tmp_path / "main.db")
    )
    key = KEY[request.param]
    connection.execute(f"CREATE TABLE articles ({key}, title VARCHAR(100), slug VARCHAR(100))")
    connection.execute(f"CREATE TABLE audits ({key}, event VARCHAR(100))")
    request.addfinalizer(ConnectionManager.close_all)
    Article.fail_in = None
    Article.calls = []
    return connection


def rows(db: Connection) -> tuple[list[tuple[Any, ...]], list[str]]:
    """(title, slug) of every article, and the events the hooks wrote (ids differ by database:
    SQLite reuses a rolled-back key, the others do not)."""
    articles = db.execute("SELECT title, slug FROM articles ORDER BY id")
    return articles, [event for (event,) in db.execute("SELECT event FROM audits ORDER BY id")]


def test_the_hooks_run_in_order_and_before_save_sets_a_column_the_write_stores(
    db: Connection,
) -> None:
    article = Article.create(title="Hello World")
    article.title = "Hello Again"
    article.save()
    article.delete()
    assert Article.calls == [
        *("before_save", "after_save") * 2,
        "before_destroy",
        "after_destroy",
    ]
    assert rows(db)[0] == []
    Article.create(title="Kept Here")
    assert rows(db)[0] == [("Kept Here", "kept-here")]


@pytest.mark.parametrize("hook", ["before_save", "after_save"])
def test_a_save_hook_that_raises_rolls_the_insert_back_outside_any_transaction(
    db: Connection, hook: str
) -> None:
    Article.fail_in = hook
    article = Article(title="Lost")
    with pytest.raises(HookFailed):
        article.save()
    assert rows(db) == ([], [])  # neither the row nor what the hooks wrote
    # The instance is as before the save: saving it again inserts it.
    assert article.id is None and article.slug is None
    Article.fail_in = None
    article.save()
    assert rows(db)[0] == [("Lost", "lost")]


def test_an_after_save_hook_that_raises_rolls_the_update_back(db: Connection) -> None:
    article = Article.create(title="First")
    Article.fail_in = "after_save"
    article.title = "Second"
    with pytest.raises(HookFailed):
        article.save()
    assert rows(db)[0] == [("First", "first")]
    Article.fail_in = None
    article.save()  # still the assigned change: written now
    assert rows(db)[0] == [("Second", "second")]


@pytest.mark.parametrize("hook", ["before_destroy", "after_destroy"])
def test_a_destroy_hook_that_raises_rolls_the_delete_back(db: Connection, hook: str) -> None:
    article = Article.create(title="Stays")
    Article.fail_in = hook
    with pytest.raises(HookFailed):
        article.delete()
    assert rows(db)[0] == [("Stays", "stays")]
    Article.fail_in = None
    article.delete()  # still persisted
    assert rows(db)[0] == []


def test_inside_a_local_transaction_the_hooks_join_it_and_a_failure_rolls_all_back(
    db: Connection,
) -> None:
    with pytest.raises(HookFailed):
        with Transaction(db):
            Article.create(title="Before")
            Article.fail_in = "after_save"
            Article.create(title="Fails")
    assert rows(db) == ([], [])
    Article.fail_in = None
    with Transaction(db):
        Article.create(title="Committed")
    assert rows(db) == (
        [("Committed", "committed")],
        ["before_save Committed", "after_save Committed"],
    )


# -- across PostgreSQL and MariaDB: the seed's real-time sync, made atomic -----------------------


class User(ActiveRecord):  # on PostgreSQL
    __connection__ = "users"

    fail: ClassVar[bool] = False

    def after_save(self) -> None:
        UserAnalytics.insert_or_update({"user_id": self.id, "name": self.name})
        if User.fail:
            raise HookFailed("after_save")


class UserAnalytics(ActiveRecord):  # on MariaDB: table user_analytics
    __connection__ = "analytics"


@pytest.fixture
def two_databases(
    pg_config: dict[str, Any], maria_config: dict[str, Any]
) -> Iterator[tuple[Connection, Connection]]:
    users = ConnectionManager.configure("users", pg_config)
    analytics = ConnectionManager.configure("analytics", maria_config)
    users.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100))")
    analytics.execute(
        "CREATE TABLE user_analytics (user_id INT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB"
    )
    User.fail = False
    yield users, analytics
    ConnectionManager.close_all()


def test_in_a_global_transaction_a_hook_writes_the_other_database_atomically(
    two_databases: tuple[Connection, Connection], coordinator: Any
) -> None:
    with global_transaction(coordinator=coordinator.address, timeout=30):
        User.create(id=1, name="ann")
    assert [(a.user_id, a.name) for a in UserAnalytics.all()] == [(1, "ann")]
    User.fail = True
    with pytest.raises(HookFailed):
        with global_transaction(coordinator=coordinator.address, timeout=30):
            User.create(id=2, name="bob")
    # Both databases rolled back: no user 2, no analytics row 2.
    assert [u.id for u in User.all()] == [1]
    assert [a.user_id for a in UserAnalytics.all()] == [1]


def test_outside_a_global_transaction_a_hook_writing_another_database_is_refused(
    two_databases: tuple[Connection, Connection],
) -> None:
    # The hook runs in the user's local transaction: its write to MariaDB could not be
    # atomic with it, so it is refused, and the user row rolls back with it.
    with pytest.raises(TwostepError, match="use global_transaction"):
        User.create(id=1, name="ann")
    assert User.count() == 0
    assert UserAnalytics.count() == 0
