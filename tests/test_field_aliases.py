"""Field aliases for legacy schemas: `email = Column("email_address")` makes `email` the
model's name of that column in every call (create, save, where, order_by, select, update,
upserts, to_dict), on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from typing import Any

import pytest

from twostep.client import (
    ActiveRecord,
    Column,
    ConfigurationError,
    Connection,
    ConnectionManager,
    F,
    UnknownColumn,
)
from twostep.testing import DIALECTS, fresh_config

KEY = {
    "postgresql": "SERIAL PRIMARY KEY",
    "mysql": "INT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "INTEGER PRIMARY KEY",
}


class User(ActiveRecord):  # the new schema: users (id, name, email)
    __connection__ = "main"


class LegacyUser(ActiveRecord):  # the old one: legacy_users (id, name, email_address, ...)
    __connection__ = "main"

    email = Column("email_address")
    logins = Column("login_count")


class LegacyAccount(ActiveRecord):  # a legacy primary key: acct_id
    __connection__ = "main"
    __tablename__ = "accounts"

    number = Column("acct_id")


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    connection = ConnectionManager.configure(
        "main", fresh_config(request, request.param, tmp_path / "main.db")
    )
    key = KEY[request.param]
    connection.execute(f"CREATE TABLE users (id {key}, name VARCHAR(50), email VARCHAR(100))")
    connection.execute(
        f"CREATE TABLE legacy_users (id {key}, name VARCHAR(50),"
        " email_address VARCHAR(100) NOT NULL UNIQUE, login_count INT NOT NULL DEFAULT 0)"
    )
    connection.execute(f"CREATE TABLE accounts (acct_id {key}, owner VARCHAR(50))")
    request.addfinalizer(ConnectionManager.close_all)
    return connection


def stored(db: Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT name, email_address, login_count FROM legacy_users ORDER BY id")


def test_create_save_and_read_use_the_field_and_write_the_column(db: Connection) -> None:
    ann = LegacyUser.create(name="ann", email="ann@old.example")
    assert ann.email == "ann@old.example"
    assert stored(db) == [("ann", "ann@old.example", 0)]
    ann.email = "ann@new.example"
    ann.save()  # UPDATE ... SET email_address
    assert stored(db) == [("ann", "ann@new.example", 0)]
    loaded = LegacyUser.where(id=ann.id).first()
    assert loaded.to_dict() == {
        "id": ann.id,
        "name": "ann",
        "email": "ann@new.example",
        "logins": 0,
    }
    assert "email=" in repr(loaded) and "email_address" not in repr(loaded)
    loaded.delete()
    assert stored(db) == []


def test_where_order_by_select_and_count_take_the_field(db: Connection) -> None:
    for name in ("bob", "ann", "cy"):
        LegacyUser.create(name=name, email=f"{name}@x.example", logins=len(name))
    assert LegacyUser.where(email="ann@x.example").first().name == "ann"
    assert LegacyUser.where(email=["bob@x.example", "cy@x.example"]).count() == 2
    assert [u.name for u in LegacyUser.order_by("-email")] == ["cy", "bob", "ann"]
    selected = LegacyUser.select("email").order_by("email").all()
    assert [(u.email, u.name) for u in selected] == [
        ("ann@x.example", None),
        ("bob@x.example", None),
        ("cy@x.example", None),
    ]
    # SQL text names the column itself.
    assert LegacyUser.where("email_address LIKE ?", "b%").first().name == "bob"
    raw = LegacyUser.raw_query("SELECT * FROM legacy_users WHERE login_count = ?", [2])
    assert [(u.name, u.email, u.logins) for u in raw] == [("cy", "cy@x.example", 2)]


def test_set_based_update_and_delete_take_the_field(db: Connection) -> None:
    LegacyUser.create(name="ann", email="ann@x.example")
    LegacyUser.create(name="bob", email="bob@x.example")
    assert LegacyUser.where(email="ann@x.example").update(email="ann@y.example") == 1
    assert LegacyUser.query().update(logins=F("logins") + 2) == 2
    assert LegacyUser.where(email="bob@x.example").delete() == 1
    assert stored(db) == [("ann", "ann@y.example", 2)]


def test_upserts_take_the_field_in_rows_and_conflict_keys(db: Connection) -> None:
    LegacyUser.insert_or_update({"name": "ann", "email": "ann@x.example"}, conflict_keys="email")
    LegacyUser.insert_or_update(name="ann2", email="ann@x.example", conflict_keys=["email"])
    rows = [
        {"name": "ann2", "email": "ann@x.example", "logins": 5},
        LegacyUser(name="bob", email="bob@x.example", logins=1),  # an instance: its fields
    ]
    assert LegacyUser.bulk_insert_or_update(rows, conflict_keys=["email"]) > 0
    assert stored(db) == [("ann2", "ann@x.example", 5), ("bob", "bob@x.example", 1)]


def test_an_aliased_primary_key_is_read_back_and_used_for_first_batch_save_and_delete(
    db: Connection,
) -> None:
    first = LegacyAccount.create(owner="ann")
    second = LegacyAccount.create(owner="bob")
    assert first.number is not None and second.number > first.number
    assert LegacyAccount.first().owner == "ann"
    pages = list(LegacyAccount.select("owner").batch(1))
    assert [[(a.owner, a.number) for a in page] for page in pages] == [
        [("ann", first.number)],
        [("bob", second.number)],
    ]
    second.owner = "cy"
    second.save()
    first.delete()
    assert db.execute("SELECT acct_id, owner FROM accounts") == [(second.number, "cy")]


def test_the_legacy_and_the_new_schema_give_the_same_dicts(db: Connection) -> None:
    """The seed's UnifiedUserService merges both without converting by hand."""
    User.create(name="new", email="new@x.example")
    LegacyUser.create(name="old", email="old@x.example")
    merged = [
        {k: u.to_dict()[k] for k in ("name", "email")} for u in [*User.all(), *LegacyUser.all()]
    ]
    assert merged == [
        {"name": "new", "email": "new@x.example"},
        {"name": "old", "email": "old@x.example"},
    ]


def test_the_column_name_of_an_aliased_field_is_no_field(db: Connection) -> None:
    with pytest.raises(UnknownColumn, match=r"no column 'email_address'.*email \(column"):
        LegacyUser(name="x", email_address="x@x.example")
    with pytest.raises(UnknownColumn, match="no column 'email_address'"):
        LegacyUser.where(email_address="x").first()
    with pytest.raises(UnknownColumn, match="no column 'email_address'"):
        LegacyUser.insert_or_update({"email_address": "x"}, conflict_keys=["email"])
    user = LegacyUser.create(name="x", email="x@x.example")
    with pytest.raises(AttributeError, match="no column 'email_address'"):
        _ = user.email_address
    with pytest.raises(AttributeError, match="no column 'email_address'"):
        user.email_address = "y"
    assert stored(db) == [("x", "x@x.example", 0)]


def test_an_alias_the_table_cannot_honour_is_refused_at_first_use(db: Connection) -> None:
    class Missing(ActiveRecord):
        __connection__ = "main"
        __tablename__ = "legacy_users"
        email = Column("mail")

    class Hiding(ActiveRecord):  # `name` would hide the table's own name column
        __connection__ = "main"
        __tablename__ = "legacy_users"
        name = Column("email_address")

    with pytest.raises(ConfigurationError, match="has no column 'mail'"):
        Missing.count()
    with pytest.raises(ConfigurationError, match="hides column 'name'"):
        Hiding.count()


def test_an_alias_named_like_a_model_method_or_doubled_is_refused_when_defined() -> None:
    with pytest.raises(ConfigurationError, match="name of an ActiveRecord method"):

        class Shadowing(ActiveRecord):
            count = Column("n")

    with pytest.raises(ConfigurationError, match="one column to two fields"):

        class Doubled(ActiveRecord):
            email = Column("email_address")
            mail = Column("email_address")
