"""The seed's "Two-phase commit": a user on PostgreSQL and its analytics row on MariaDB,
written in one `global_transaction()`: both commit, or neither does.

    .venv/bin/python examples/two_phase_commit.py

The block's writes are prepared on both databases (PREPARE TRANSACTION / XA PREPARE), the
coordinator logs the decision, then both commit. An exception anywhere in the block rolls
back both; so does a failure to prepare either side. (Starts its own throwaway databases and
a coordinator: examples/_setup.py.)
"""

from __future__ import annotations

from _setup import example

from twostep.client import ActiveRecord, DatabaseError, get_connection, global_transaction


class User(ActiveRecord):  # table users
    __connection__ = "main"  # PostgreSQL


class UserAnalytics(ActiveRecord):  # table user_analytics
    __connection__ = "analytics"  # MariaDB


def create_user_with_analytics(name: str, email: str, *, fail: bool = False) -> str:
    """Both rows or neither; the transaction's id at the coordinator."""
    with global_transaction(timeout=30) as gtx:
        user = User.create(name=name, email=email)
        UserAnalytics.create(user_id=user.id, signup_source="web", visits=0)
        if fail:
            raise RuntimeError("the welcome e-mail could not be queued")
    return gtx.gtrid


def main() -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL,"
        " email VARCHAR(255) NOT NULL UNIQUE)"
    )
    get_connection("analytics").execute(
        "CREATE TABLE user_analytics (user_id INT PRIMARY KEY, signup_source VARCHAR(20),"
        " visits INT NOT NULL) ENGINE=InnoDB"
    )

    gtrid = create_user_with_analytics("ann", "ann@example.com")
    print(
        f"committed {gtrid}: users={User.count()} on PostgreSQL, "
        f"user_analytics={UserAnalytics.count()} on MariaDB"
    )

    try:
        create_user_with_analytics("bob", "bob@example.com", fail=True)
    except RuntimeError as exc:
        print(
            f"rolled back ({exc}): still users={User.count()}, "
            f"user_analytics={UserAnalytics.count()}"
        )

    # A failure on one database (a duplicate e-mail on PostgreSQL) rolls the other back too.
    try:
        create_user_with_analytics("ann again", "ann@example.com")
    except DatabaseError:
        print(
            f"rolled back (duplicate e-mail on PostgreSQL): still "
            f"users={User.count()}, user_analytics={UserAnalytics.count()}"
        )
    assert (User.count(), UserAnalytics.count()) == (1, 1)
    print("two-phase commit: both databases agree")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics"], coordinator=True):
        main()
