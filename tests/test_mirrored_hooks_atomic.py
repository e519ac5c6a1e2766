"""`twostep.sync.Mirrored`: real-time sync through hooks, atomic. A user saved or deleted on
PostgreSQL writes its analytics row on MariaDB in the same `global_transaction()`; when the
analytics write fails (a real MariaDB error), the user row rolls back too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from twostep.client import (
    ActiveRecord,
    ConnectionManager,
    DatabaseError,
    Transaction,
    TwostepError,
    global_transaction,
)
from twostep.sync import Mirrored


class UserAnalytics(ActiveRecord):  # MariaDB: user_analytics
    __connection__ = "analytics"


class User(Mirrored, ActiveRecord):  # PostgreSQL
    __connection__ = "users"
    __mirror__ = UserAnalytics
    __mirror_keys__ = ("user_id",)

    segment: ClassVar[str | None] = "web"  # None: the analytics write fails (NOT NULL)

    def mirror_row(self) -> dict[str, Any]:
        return {"user_id": self.id, "name": self.name, "segment": User.segment}


@pytest.fixture
def databases(
    pg_config: dict[str, Any], maria_config: dict[str, Any], coordinator: Any
) -> Iterator[None]:
    ConnectionManager.configure("users", pg_config).execute(
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100))"
    )
    ConnectionManager.configure("analytics", maria_config).execute(
        "CREATE TABLE user_analytics (user_id INT PRIMARY KEY, name VARCHAR(100),"
        " segment VARCHAR(20) NOT NULL) ENGINE=InnoDB"
    )
    User.__mirror_coordinator__ = coordinator.address
    User.segment = "web"
    yield
    ConnectionManager.close_all()


def stored() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    users = [(u.id, u.name) for u in User.order_by("id").all()]
    copies = [(a.user_id, a.name) for a in UserAnalytics.order_by("user_id").all()]
    return users, copies


def test_save_and_delete_write_the_analytics_copy_in_the_same_transaction(
    databases: None,
) -> None:
    User.create(id=1, name="ann")
    bob = User.create(id=2, name="bob")
    bob.name = "bobby"
    bob.save()
    assert stored() == ([(1, "ann"), (2, "bobby")], [(1, "ann"), (2, "bobby")])
    bob.delete()
    assert stored() == ([(1, "ann")], [(1, "ann")])


def test_a_failing_analytics_write_rolls_the_source_row_back_too(databases: None) -> None:
    ann = User.create(id=1, name="ann")
    User.segment = None  # MariaDB refuses the copy: segment is NOT NULL
    with pytest.raises(DatabaseError):
        User.create(id=2, name="bob")
    ann.name = "anna"
    with pytest.raises(DatabaseError):
        ann.save()
    # Neither the new user nor the rename reached PostgreSQL.
    assert stored() == ([(1, "ann")], [(1, "ann")])


def test_saves_inside_an_open_global_transaction_join_it_and_roll_back_with_it(
    databases: None, coordinator: Any
) -> None:
    with pytest.raises(RuntimeError):
        with global_transaction(coordinator=coordinator.address, timeout=30):
            User.create(id=1, name="ann")
            User.create(id=2, name="bob")
            raise RuntimeError("the block fails after both saves")
    assert stored() == ([], [])


def test_inside_a_local_transaction_a_mirrored_save_is_refused_and_writes_nothing(
    databases: None,
) -> None:
    with pytest.raises(TwostepError, match="inside a local Transaction"):
        with Transaction("users"):
            User.create(id=1, name="ann")
    assert stored() == ([], [])
