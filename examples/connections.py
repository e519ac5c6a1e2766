"""The seed's "Connections": named connections to several databases, and models bound to
them by name.

    .venv/bin/python examples/connections.py

Three connections ("main" on PostgreSQL, "analytics" and "legacy" on MariaDB, each its own
database) are configured by examples/_setup.py with `ConnectionManager.configure(name,
config)`, as an application does at start; this script adds a fourth, "reports", to the
analytics database with a smaller pool. A model names its connection in `__connection__`;
`Model.using(name)` runs one query on another; `get_connection(name).execute()` runs SQL.
A local `Transaction(name)` covers one connection only: a write to another database inside
it is refused (that is what `global_transaction()` is for: examples/two_phase_commit.py).
"""

from __future__ import annotations

from _setup import Example, example

from twostep.client import (
    ActiveRecord,
    ConnectionManager,
    Transaction,
    TwostepError,
    get_connection,
)


class User(ActiveRecord):  # table users
    __connection__ = "main"


class AnalyticsUserData(ActiveRecord):  # table analytics_user_data
    __connection__ = "analytics"


class LegacyUser(ActiveRecord):  # table legacy_users
    __connection__ = "legacy"


def main(ex: Example) -> None:
    # A second connection to the analytics database: its own pool of at most 2 sessions.
    ConnectionManager.configure(
        "reports", {**ex.configs["analytics"], "pool_size": 2, "max_overflow": 0}
    )
    for name in ConnectionManager.names():
        connection = get_connection(name)
        [(version,)] = connection.execute("SELECT version()")
        print(f"connection {name!r}: {connection.dialect.name}, server {version.split(' on ')[0]}")

    get_connection("main").execute(
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL)"
    )
    get_connection("analytics").execute(
        "CREATE TABLE analytics_user_data (user_id INT PRIMARY KEY, visits INT NOT NULL)"
    )
    get_connection("legacy").execute(
        "CREATE TABLE legacy_users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100))"
    )

    # Each model writes to its own database.
    with Transaction("main"):  # both users, or neither
        ann = User.create(name="ann")
        User.create(name="bob")
    AnalyticsUserData.create(user_id=ann.id, visits=3)
    LegacyUser.create(name="cy")
    print(
        f"users={User.count()} on 'main', analytics_user_data={AnalyticsUserData.count()} on "
        f"'analytics', legacy_users={LegacyUser.count()} on 'legacy'"
    )
    # One query on another connection: the same table, read through the reports pool.
    visits = AnalyticsUserData.using("reports").where(user_id=ann.id).first()
    print(f"through 'reports': user {ann.id} has {visits.visits if visits else 0} visits")

    # A local transaction is one database's: the analytics write inside it is refused,
    # and the user written before it rolls back with the block.
    try:
        with Transaction("main"):
            dan = User.create(name="dan")
            AnalyticsUserData.create(user_id=dan.id, visits=0)
    except TwostepError as exc:
        print(f"refused in Transaction('main'): {type(exc).__name__}: {exc}")
    assert (User.count(), AnalyticsUserData.count()) == (2, 1)
    print("connections: each model on its own database")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics", "legacy"]) as ex:
        main(ex)
