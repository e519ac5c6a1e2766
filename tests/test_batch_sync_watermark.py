"""`twostep.sync.BatchSync`: rows changed since a (timestamp, key) watermark are copied from
PostgreSQL to MariaDB in batches; rows sharing a timestamp across a batch boundary are all
copied; a batch that fails or is killed between its upserts and its watermark is copied again
by the next run, once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest

from twostep.client import ActiveRecord, Connection, ConnectionManager
from twostep.sync import BatchSync, Position, SyncLog
from twostep.testing import run_in_process

T0 = datetime(2026, 1, 1, 12, 0, 0)


class User(ActiveRecord):  # PostgreSQL
    __connection__ = "users"


class UserAnalytics(ActiveRecord):  # MariaDB: user_analytics
    __connection__ = "analytics"


def connect(configs: Mapping[str, dict[str, Any]]) -> None:
    for name, config in configs.items():
        ConnectionManager.configure(name, config)


def user_sync(batch_size: int = 3) -> BatchSync:
    return BatchSync(
        "users->analytics",
        User,
        UserAnalytics,
        transform=lambda user: {"user_id": user.id, "name": user.name},
        batch_size=batch_size,
    )


@pytest.fixture
def configs(
    pg_config: dict[str, Any], maria_config: dict[str, Any]
) -> Iterator[dict[str, dict[str, Any]]]:
    configs = {"users": pg_config, "analytics": maria_config}
    connect(configs)
    users = ConnectionManager.get_connection("users")
    users.execute(
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100),"
        " updated_at TIMESTAMP(6) NOT NULL)"
    )
    ConnectionManager.get_connection("analytics").execute(
        "CREATE TABLE user_analytics (user_id INT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB"
    )
    SyncLog.create_table("analytics")
    yield configs
    ConnectionManager.close_all()


def add_users(users: Connection, ids: range, at: datetime) -> None:
    for i in ids:
        users.execute("INSERT INTO users (id, name, updated_at) VALUES (?, ?, ?)", (i, f"u{i}", at))


def copied() -> list[tuple[int, str]]:
    return [(a.user_id, a.name) for a in UserAnalytics.order_by("user_id").all()]


def rows_synced() -> int:
    log = SyncLog.using("analytics").where(name="users->analytics").first()
    assert log is not None
    return int(log.rows_synced)


def test_rows_sharing_a_timestamp_across_batch_boundaries_are_all_copied_and_later_changes_follow(
    configs: dict[str, dict[str, Any]],
) -> None:
    users = ConnectionManager.get_connection("users")
    add_users(users, range(1, 3), T0)
    add_users(users, range(3, 10), T0 + timedelta(seconds=1))  # 7 rows, one timestamp
    sync = user_sync(batch_size=3)
    assert sync.run() == 9
    assert copied() == [(i, f"u{i}") for i in range(1, 10)]
    assert sync.position() == Position(T0 + timedelta(seconds=1), (9,))
    # A later change (a new row at the same timestamp as the last one copied, but a greater
    # key; an update with a later timestamp) is copied by the next run, nothing else.
    add_users(users, range(10, 11), T0 + timedelta(seconds=1))
    users.execute(
        "UPDATE users SET name = 'ann', updated_at = ? WHERE id = 4", (T0 + timedelta(2),)
    )
    assert sync.run() == 2
    assert copied() == [(i, "ann" if i == 4 else f"u{i}") for i in range(1, 11)]
    assert sync.run() == 0
    assert rows_synced() == 11


class FailingSync(BatchSync):
    """Raises after the upserts of its `fail_in`-th batch, before its watermark is saved."""

    def __init__(self, fail_in: int):
        base = user_sync()
        super().__init__(
            base.name, User, UserAnalytics, transform=base.transform, batch_size=base.batch_size
        )
        self.fail_in = fail_in
        self.batches = 0

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        super().write(rows)
        self.batches += 1
        if self.batches == self.fail_in:
            raise RuntimeError("injected between the upserts and the watermark")


def test_a_batch_that_fails_between_its_upserts_and_its_watermark_is_copied_once_by_the_rerun(
    configs: dict[str, dict[str, Any]],
) -> None:
    add_users(ConnectionManager.get_connection("users"), range(1, 11), T0)
    with pytest.raises(RuntimeError, match="injected"):
        FailingSync(fail_in=2).run()
    # Batch 1 committed with its watermark; batch 2's upserts rolled back with it.
    assert copied() == [(i, f"u{i}") for i in range(1, 4)]
    assert user_sync().position() == Position(T0, (3,))
    assert user_sync().run() == 7
    assert copied() == [(i, f"u{i}") for i in range(1, 11)]
    assert rows_synced() == 10  # every row counted once: no batch was applied twice


def sync_killed_in_batch(configs: dict[str, dict[str, Any]], batch: int) -> None:
    """In a child process: run the sync, SIGKILLed right after the upserts of `batch`."""
    connect(configs)
    sync = FailingSync(fail_in=batch)
    original = sync.write

    def write_then_die(rows: list[Mapping[str, Any]]) -> None:
        try:
            original(rows)
        except RuntimeError:
            os.kill(os.getpid(), signal.SIGKILL)

    sync.write = write_then_die  # type: ignore[method-assign]
    sync.run()


def test_a_sync_killed_mid_batch_resumes_without_skipping_or_duplicating_rows(
    configs: dict[str, dict[str, Any]],
) -> None:
    users = ConnectionManager.get_connection("users")
    add_users(users, range(1, 6), T0)
    add_users(users, range(6, 11), T0 + timedelta(seconds=1))
    run = run_in_process(sync_killed_in_batch, args=(configs, 3))
    assert run.killed, run.describe()
    assert copied() == [(i, f"u{i}") for i in range(1, 7)]  # batches 1 and 2
    assert user_sync().position() == Position(T0 + timedelta(seconds=1), (6,))
    assert user_sync().run() == 4
    assert copied() == [(i, f"u{i}") for i in range(1, 11)]
    assert rows_synced() == 10
