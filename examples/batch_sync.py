"""The seed's "Batch synchronization": copy the users changed since the last run from the
main database (PostgreSQL) to the analytics database (MariaDB), with the high-water mark in
its `SyncLog`.

    .venv/bin/python examples/batch_sync.py

`BatchSync` (twostep.sync) reads the rows after its watermark in (updated_at, id) order, a
batch at a time, and upserts each batch together with the new watermark in one local
transaction on the analytics database. So users imported with one timestamp are not lost at
a batch boundary, a run that fails halfway resumes after the last committed batch (copying
nothing twice), and a run with nothing new copies nothing. (Starts its own throwaway
databases: examples/_setup.py.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from _setup import example

from twostep.client import ActiveRecord, get_connection
from twostep.sync import BatchSync, SyncLog


class User(ActiveRecord):  # users (id, name, email, updated_at)
    __connection__ = "main"  # PostgreSQL

    def before_save(self) -> None:
        self.updated_at = datetime.now(UTC)  # every save moves the row past the watermark


class UserAnalytics(ActiveRecord):  # user_analytics (user_id, name, email)
    __connection__ = "analytics"  # MariaDB


class AnalyticsOutage(BatchSync):
    """The same sync, but the analytics database goes away during its second batch."""

    batches = 0

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        self.batches += 1
        if self.batches == 2:
            raise ConnectionError("lost the analytics database")
        super().write(rows)


def user_sync(kind: type[BatchSync] = BatchSync) -> BatchSync:
    return kind(
        "users->analytics",
        User,
        UserAnalytics,
        changed_at="updated_at",
        key=("id",),
        batch_size=4,
        transform=lambda user: {"user_id": user.id, "name": user.name, "email": user.email},
        conflict_keys=["user_id"],
    )


def report(what: str, copied: int | None = None) -> None:
    [log] = SyncLog.using("analytics").all()
    mark = user_sync().position()
    assert mark is not None
    print(
        f"{what}: {'' if copied is None else f'copied {copied}, '}"
        f"user_analytics={UserAnalytics.count()}, watermark (updated_at, id) = "
        f"({mark.changed_at:%H:%M:%S.%f}, {mark.key[0]}), rows_synced={log.rows_synced}"
    )


def main() -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL,"
        " email VARCHAR(255) NOT NULL, updated_at TIMESTAMPTZ(6) NOT NULL)"
    )
    get_connection("analytics").execute(
        "CREATE TABLE user_analytics (user_id INT PRIMARY KEY, name VARCHAR(100),"
        " email VARCHAR(255)) ENGINE=InnoDB"
    )
    SyncLog.create_table("analytics")

    # Ten users imported at once: one timestamp for all, so batches of 4 split equal stamps.
    imported = datetime.now(UTC)
    User.bulk_insert_or_update(
        [
            {"id": i, "name": f"user{i}", "email": f"user{i}@example.com", "updated_at": imported}
            for i in range(1, 11)
        ]
    )
    try:
        user_sync(AnalyticsOutage).run()
    except ConnectionError as exc:
        report(f"first run failed in its second batch ({exc})")

    report("the next run resumed", user_sync().run())

    for user in User.where(id=[2, 7]).all():
        user.email = user.email.replace("example.com", "example.org")
        user.save()
    User.create(id=11, name="user11", email="user11@example.com")
    report("after 2 changed users and 1 new", user_sync().run())
    report("nothing new", user_sync().run())

    copied = {(a.user_id, a.email) for a in UserAnalytics.all()}
    assert copied == {(u.id, u.email) for u in User.all()}
    print("batch sync: user_analytics matches users")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics"]):
        main()
