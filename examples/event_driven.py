"""The seed's "Event-driven consistency": a `PendingTask` table that holds the work a change
sets off (copy the user to analytics, tell the CRM), written in the change's own transaction,
and a worker that does it with retries.

    .venv/bin/python examples/event_driven.py

`TaskQueue.enqueue` (twostep.sync) writes the task in the user's transaction on PostgreSQL:
it exists if and only if the user does. A `TaskWorker` claims due tasks (SKIP LOCKED: workers
never wait for each other), retries a failing handler after an exponential backoff and marks
the task `failed` after `max_attempts`, where operators see it (`queue.failed()`) and put it
back (`queue.retry(id)`). Handlers run at least once, so each is idempotent: the analytics
copy is applied with `apply_once` under the task's key. Starts its own throwaway databases:
examples/_setup.py.
"""

from __future__ import annotations

import time

from _setup import example

from twostep.client import ActiveRecord, Transaction, get_connection
from twostep.sync import (
    Backoff,
    PendingTask,
    ProcessedEvent,
    Task,
    TaskQueue,
    TaskWorker,
    apply_once,
)


class User(ActiveRecord):  # users (id, name, email)
    __connection__ = "main"  # PostgreSQL


class AnalyticsUserData(ActiveRecord):  # analytics_user_data (user_id, name, email)
    __connection__ = "analytics"  # MariaDB


queue = TaskQueue("main", max_attempts=3, backoff=Backoff(base_s=0.1, factor=2, max_s=1))


def register(name: str, email: str) -> None:
    with Transaction("main"):  # the user and its tasks, or nothing
        user = User.create(name=name, email=email)
        queue.enqueue("sync_user_analytics", {"user_id": user.id})
        queue.enqueue("notify_crm", {"user_id": user.id})


def sync_user_analytics(task: Task) -> None:
    user = User.where(id=task.payload["user_id"]).first()
    if user is None:
        return  # deleted since: nothing to copy
    apply_once(
        "analytics",
        task.key,
        lambda: AnalyticsUserData.insert_or_update(
            {"user_id": user.id, "name": user.name, "email": user.email},
            conflict_keys=["user_id"],
        ),
    )


class Crm:
    """Another system, reached over the network: down for now."""

    def __init__(self) -> None:
        self.up = False
        self.notified: set[int] = set()

    def notify(self, task: Task) -> None:
        if not self.up:
            raise ConnectionError("CRM unreachable")
        self.notified.add(task.payload["user_id"])  # keyed by user: a repeat changes nothing


def run_until_settled(worker: TaskWorker) -> int:
    """Run due tasks until none is pending or running (waiting out the backoffs)."""
    ran = 0
    while queue.tasks("pending") or queue.tasks("running"):
        ran += worker.drain()
        time.sleep(0.05)
    return ran


def main() -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name VARCHAR(100), email VARCHAR(255))"
    )
    get_connection("analytics").execute(
        "CREATE TABLE analytics_user_data (user_id INT PRIMARY KEY, name VARCHAR(100),"
        " email VARCHAR(255)) ENGINE=InnoDB"
    )
    queue.create_table()
    ProcessedEvent.create_table("analytics")

    register("ann", "ann@example.com")
    register("bob", "bob@example.com")
    print(f"pending_tasks: {PendingTask.using('main').where(status='pending').count()} pending")

    crm = Crm()
    worker = TaskWorker(
        queue, {"sync_user_analytics": sync_user_analytics, "notify_crm": crm.notify}
    )
    print(
        f"worker ran {run_until_settled(worker)} attempts: "
        f"analytics_user_data={AnalyticsUserData.count()}"
    )
    for task in queue.failed():
        print(
            f"failed after {task.attempts} attempts: {task.kind} {task.payload} ({task.last_error})"
        )

    crm.up = True  # the operator fixed the CRM, and puts the failed tasks back
    for task in queue.failed():
        queue.retry(task.id)
    print(
        f"after retry: worker ran {run_until_settled(worker)}, "
        f"CRM notified of users {sorted(crm.notified)}"
    )
    assert not queue.failed() and AnalyticsUserData.count() == User.count() == 2
    print("event-driven: every task done, analytics and the CRM caught up")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics"]):
        main()
