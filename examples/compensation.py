"""The seed's "Compensating transactions": when a step cannot join the transaction (another
service's API), undo what was committed before it if it fails:
`User.where(id=user_id).delete()`.

    .venv/bin/python examples/compensation.py

The seed called the compensation in an `except` block, so a process that died during the
step never ran it. Here the compensation is a pending task (`TaskQueue`, twostep.sync)
enqueued *armed* in the same transaction as the user: `queue.armed(undo)` makes it due at once
if the step raises and cancels it if the step succeeds, and if the process dies in between a
worker runs it once its delay has passed. The handler is idempotent (`apply_once`), since a
worker may run a task twice. Starts its own throwaway databases: examples/_setup.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _setup import example

from twostep.client import ActiveRecord, Transaction, get_connection
from twostep.sync import ProcessedEvent, Task, TaskQueue, TaskWorker, apply_once


class User(ActiveRecord):  # users (id, name)
    __connection__ = "main"  # PostgreSQL


class BillingAccount(ActiveRecord):  # billing_accounts (user_id): the billing service's own
    __connection__ = "billing"  # MariaDB


class PaymentDeclined(Exception):
    pass


def open_billing_account(user: User) -> None:
    """Another service: it commits in its own database, and cannot join our transaction."""
    if user.name == "bob":
        raise PaymentDeclined(f"no card on file for {user.name}")
    BillingAccount.create(user_id=user.id)


queue = TaskQueue("main", max_attempts=3)
UNDO_AFTER_S = 60  # longer than the step can take: then the compensation runs by itself


def register(name: str, *, die_in_step: bool = False) -> None:
    with Transaction("main"):
        user = User.create(name=name)
        undo = queue.enqueue("delete_user", {"user_id": user.id}, delay_s=UNDO_AFTER_S)
    if die_in_step:
        return  # as if the process died here: nothing cancels or releases the compensation
    try:
        with queue.armed(undo):
            open_billing_account(user)
    except PaymentDeclined as exc:
        print(f"{name}: {exc}; the compensation is due now")
    else:
        print(f"{name}: billing account opened; the compensation is cancelled")


def delete_user(task: Task) -> None:
    """The compensation; a second run of the same task changes nothing."""
    apply_once("main", task.key, lambda: User.where(id=task.payload["user_id"]).delete())


def names() -> list[str]:
    return [user.name for user in User.order_by("id").all()]


def main() -> None:
    get_connection("main").execute("CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT)")
    get_connection("billing").execute(
        "CREATE TABLE billing_accounts (user_id INT PRIMARY KEY) ENGINE=InnoDB"
    )
    queue.create_table()
    ProcessedEvent.create_table("main")  # apply_once's record of what it applied

    register("ann")  # succeeds
    register("bob")  # the billing service declines
    register("cy", die_in_step=True)  # the process dies during the step
    worker = TaskWorker(queue, {"delete_user": delete_user})
    print(f"worker ran {worker.drain()} compensation; users: {names()}")

    # A minute later, cy's compensation is due too: a worker whose clock reads then runs it.
    later = TaskQueue("main", clock=lambda: datetime.now(UTC) + timedelta(seconds=UNDO_AFTER_S))
    print(
        f"{UNDO_AFTER_S} s later a worker ran {TaskWorker(later, worker.handlers).drain()} "
        f"compensation; users: {names()}"
    )
    print(f"tasks: {sorted((t.payload['user_id'], t.status) for t in queue.tasks())}")
    assert names() == ["ann"] and BillingAccount.count() == 1
    print("compensation: only ann, who has a billing account, is left")


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["billing"]):
        main()
