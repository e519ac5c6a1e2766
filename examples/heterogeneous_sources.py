"""The seed's "Heterogeneous data sources": a `UnifiedUserService` over the users of the new
system (PostgreSQL, table users: email) and of the legacy one (MariaDB, table legacy_users:
email_address).

    .venv/bin/python examples/heterogeneous_sources.py

`LegacyUser` maps the legacy column email_address to the field `email` (`Column`), so both
models give and take the same dicts and the service converts nothing by hand. Moving a
legacy user into the new system writes both databases in one `global_transaction()`: the
user is in exactly one of them afterwards, whatever fails. (Starts its own throwaway
databases and a coordinator: examples/_setup.py.)
"""

from __future__ import annotations

from typing import Any

from _setup import example

from twostep.client import ActiveRecord, Column, get_connection, global_transaction


class User(ActiveRecord):  # users (id, name, email)
    __connection__ = "main"  # PostgreSQL


class LegacyUser(ActiveRecord):  # legacy_users (id, name, email_address)
    __connection__ = "legacy"  # MariaDB
    email = Column("email_address")


class UnifiedUserService:
    """One view of the users of both systems."""

    @staticmethod
    def get_all_users() -> list[dict[str, Any]]:
        """Every user of both systems (id, name, email, source), by e-mail."""
        users = [
            {**user.to_dict(), "source": source}
            for source, model in (("main", User), ("legacy", LegacyUser))
            for user in model.all()
        ]
        return sorted(users, key=lambda user: user["email"])

    @staticmethod
    def find_user_by_email(email: str) -> ActiveRecord | None:
        return User.where(email=email).first() or LegacyUser.where(email=email).first()

    @staticmethod
    def update_email(old: str, new: str) -> int:
        """Change an address wherever it is; the number of users changed."""
        return User.where(email=old).update(email=new) + LegacyUser.where(email=old).update(
            email=new
        )

    @staticmethod
    def migrate_legacy_user(email: str) -> User:
        """Move a legacy user into the new system: the new row and the deleted legacy row
        commit together, or neither does."""
        with global_transaction(timeout=30):
            legacy = LegacyUser.where(email=email).for_update().first()
            if legacy is None:
                raise LookupError(f"no legacy user with e-mail {email}")
            user = User.create(name=legacy.name, email=legacy.email)
            LegacyUser.where(id=legacy.id).delete()
        return user


def main() -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL,"
        " email VARCHAR(255) NOT NULL UNIQUE)"
    )
    get_connection("legacy").execute(
        "CREATE TABLE legacy_users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100),"
        " email_address VARCHAR(255) NOT NULL UNIQUE) ENGINE=InnoDB"
    )
    User.create(name="ann", email="ann@example.com")
    User.create(name="bob", email="bob@example.com")
    LegacyUser.create(name="cy", email="cy@old.example.com")  # INSERT ... (email_address)
    LegacyUser.create(name="di", email="di@old.example.com")

    service = UnifiedUserService()
    for user in service.get_all_users():
        print(f"{user['source']:>6}: {user['name']} <{user['email']}>")
    found = service.find_user_by_email("cy@old.example.com")
    print(f"found cy@old.example.com: {type(found).__name__} {found.to_dict() if found else None}")

    changed = service.update_email("di@old.example.com", "di@example.org")
    print(f"update_email changed {changed} user (UPDATE legacy_users SET email_address = ...)")

    moved = service.migrate_legacy_user("cy@old.example.com")
    print(f"migrated cy: users has id {moved.id}, legacy_users has {LegacyUser.count()} left")
    assert [u["source"] for u in service.get_all_users()].count("legacy") == 1
    assert User.where(email="cy@old.example.com").count() == 1
    print("heterogeneous sources: one list of users from PostgreSQL and MariaDB")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["legacy"], coordinator=True):
        main()
