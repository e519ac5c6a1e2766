"""The seed's "Real-time synchronization": a `User` (PostgreSQL) whose `after_save` hook
upserts its `AnalyticsUserData` row (MariaDB) and whose `after_destroy` deletes it, made
atomic.

    .venv/bin/python examples/realtime_sync.py

The seed ran the hook after the user's own write had committed, so a failing analytics write
left the two databases apart. Hooks run inside the write's transaction: inside a
`global_transaction()` the user row and its analytics row commit together or not at all, and
outside one the hook's write to a second database is refused and the user row rolls back.
(`twostep.sync.Mirrored` packages the same: it opens the `global_transaction()` in `save()`
itself.) Starts its own throwaway databases and a coordinator: examples/_setup.py.
"""

from __future__ import annotations

from _setup import example

from twostep.client import (
    ActiveRecord,
    DatabaseError,
    TwostepError,
    get_connection,
    global_transaction,
)


class AnalyticsUserData(ActiveRecord):  # analytics_user_data (user_id, email, plan)
    __connection__ = "analytics"  # MariaDB


class User(ActiveRecord):  # users (id, email, plan)
    __connection__ = "main"  # PostgreSQL

    def after_save(self) -> None:
        analytics_data = {"user_id": self.id, "email": self.email, "plan": self.plan}
        AnalyticsUserData.insert_or_update(analytics_data, conflict_keys=["user_id"])

    def after_destroy(self) -> None:
        AnalyticsUserData.where(user_id=self.id).delete()


def both(user_id: int) -> str:
    user = User.where(id=user_id).first()
    copy = AnalyticsUserData.where(user_id=user_id).first()
    return (
        f"users: {user.plan if user else None}, analytics_user_data: {copy.plan if copy else None}"
    )


def main() -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(255) NOT NULL,"
        " plan VARCHAR(20) NOT NULL)"
    )
    # The analytics side knows only two plans: a third makes its upsert fail.
    get_connection("analytics").execute(
        "CREATE TABLE analytics_user_data (id INT AUTO_INCREMENT PRIMARY KEY,"
        " user_id INT NOT NULL UNIQUE, email VARCHAR(255), plan VARCHAR(20),"
        " CHECK (plan IN ('free', 'pro'))) ENGINE=InnoDB"
    )

    with global_transaction(timeout=30):
        ann = User.create(id=1, email="ann@example.com", plan="free")
    print(f"created ann: {both(1)}")

    with global_transaction(timeout=30):
        ann.plan = "pro"
        ann.save()
    print(f"upgraded ann: {both(1)}")

    try:
        with global_transaction(timeout=30):
            ann.plan = "enterprise"
            ann.save()  # MariaDB refuses the copy: the user's update rolls back too
    except DatabaseError as exc:
        print(f"analytics refused 'enterprise' ({type(exc).__name__}): {both(1)}")

    try:
        User.create(id=2, email="bob@example.com", plan="free")  # no global transaction
    except TwostepError as exc:
        print(f"outside global_transaction(): {type(exc).__name__}, bob is in neither: {both(2)}")

    with global_transaction(timeout=30):
        ann.delete()
    print(f"deleted ann: {both(1)}")
    assert User.count() == AnalyticsUserData.count() == 0
    print("real-time sync: users and analytics_user_data never disagreed")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics"], coordinator=True):
        main()
