"""`twostep.sync.TaskQueue` / `TaskWorker` on real PostgreSQL and MariaDB: failing tasks are
retried with exponential backoff and marked `failed` after N attempts (listed for operators);
concurrent workers claim different tasks (SKIP LOCKED) and each runs once; a worker killed
mid-task loses its claim when it expires and another worker finishes the task, its effect
applied once; a compensation armed before a step runs when the step fails or its process
dies, and is cancelled when it succeeds. Time is a clock the test moves: no sleeps."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from twostep.client import ActiveRecord, ConnectionManager, Transaction, TwostepError
from twostep.sync import Backoff, ProcessedEvent, Task, TaskQueue, TaskWorker, apply_once
from twostep.testing import run_in_process

KEY = {"postgresql": "SERIAL PRIMARY KEY", "mysql": "INT AUTO_INCREMENT PRIMARY KEY"}


class Effect(ActiveRecord):  # one row per handler run that took effect
    __connection__ = "jobs"


class Order(ActiveRecord):
    __connection__ = "jobs"


class Clock:
    """The queue's time: starts now, moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def prepare(config: dict[str, Any]) -> None:
    connection = ConnectionManager.configure("jobs", config)
    engine = " ENGINE=InnoDB" if connection.dialect.name == "mysql" else ""
    key = KEY[connection.dialect.name]
    connection.execute(f"CREATE TABLE effects (id {key}, task VARCHAR(100)){engine}")
    connection.execute(f"CREATE TABLE orders (id {key}, state VARCHAR(20)){engine}")
    ProcessedEvent.create_table("jobs")
    TaskQueue("jobs").create_table()


@pytest.fixture(params=["postgresql", "mysql"])
def config(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    name = "pg_config" if request.param == "postgresql" else "maria_config"
    config = dict(request.getfixturevalue(name))
    prepare(config)
    yield config
    ConnectionManager.close_all()


def record_once(task: Task) -> None:
    """An idempotent handler: its effect and the task's key commit together."""
    apply_once("jobs", task.key, lambda: Effect.create(task=task.id))


def always_fails(task: Task) -> None:
    raise RuntimeError(f"attempt {task.attempts} failed")


def test_a_failing_task_backs_off_exponentially_then_is_failed_and_listed_for_operators(
    config: dict[str, Any],
) -> None:
    clock = Clock()
    queue = TaskQueue("jobs", max_attempts=3, backoff=Backoff(base_s=10, factor=2), clock=clock)
    task_id = queue.enqueue("flaky", {"n": 1})
    worker = TaskWorker(queue, {"flaky": always_fails})
    started = clock.now
    assert worker.run_once() is not None
    [task] = queue.tasks("pending")
    assert (task.attempts, task.run_after) == (1, started + timedelta(seconds=10))
    assert worker.run_once() is None  # not due yet
    clock.advance(10)
    assert worker.run_once() is not None
    [task] = queue.tasks("pending")
    assert (task.attempts, task.run_after) == (2, started + timedelta(seconds=30))
    clock.advance(20)
    assert worker.run_once() is not None
    assert queue.tasks("pending") == []
    [failed] = queue.failed()
    assert (failed.id, failed.attempts, failed.last_error) == (
        task_id,
        3,
        "RuntimeError: attempt 3 failed",
    )
    clock.advance(3600)
    assert worker.run_once() is None  # failed tasks are not retried by themselves
    assert queue.retry(task_id)
    assert TaskWorker(queue, {"flaky": record_once}).drain() == 1
    assert [t.status for t in queue.tasks()] == ["done"]


def test_concurrent_workers_claim_different_tasks_and_each_task_runs_once(
    config: dict[str, Any],
) -> None:
    queue = TaskQueue("jobs")
    ids = {queue.enqueue("record", {"n": n}) for n in range(20)}
    ran: list[str] = []

    def handler(task: Task) -> None:
        ran.append(task.id)
        record_once(task)

    workers = [TaskWorker(queue, {"record": handler}, name=f"w{i}") for i in range(2)]
    threads = [threading.Thread(target=w.drain) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(ran) == sorted(ids)  # every task, none twice
    assert sorted(e.task for e in Effect.all()) == sorted(ids)
    assert {t.status for t in queue.tasks()} == {"done"}


def record_then_die(task: Task) -> None:
    """The first attempt takes effect, then its process is killed before the task is marked."""
    record_once(task)
    if task.attempts == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def work_in_child(config: dict[str, Any]) -> None:
    ConnectionManager.configure("jobs", config)
    TaskWorker(TaskQueue("jobs", claim_s=30), {"record": record_then_die}).run_once()


def test_a_worker_killed_mid_task_loses_its_claim_and_another_finishes_the_task_once(
    config: dict[str, Any],
) -> None:
    clock = Clock()
    queue = TaskQueue("jobs", claim_s=30, clock=clock)
    task_id = queue.enqueue("record", {})
    run = run_in_process(work_in_child, args=(config,))
    assert run.killed, run.describe()
    [task] = queue.tasks()
    assert (task.status, task.attempts) == ("running", 1)
    # The child claimed by the real clock, some time after this one was made (a slow spawn
    # under load took over a second): catch up, so that 31 s from here is past its claim.
    clock.now = datetime.now(UTC)
    other = TaskWorker(queue, {"record": record_then_die}, name="other")
    assert other.run_once() is None  # the dead worker's claim still holds
    clock.advance(31)
    assert other.run_once() is not None
    [task] = queue.tasks()
    assert (task.id, task.status, task.attempts, task.claimed_by) == (
        task_id,
        "done",
        2,
        "other",
    )
    assert [e.task for e in Effect.all()] == [task_id]  # applied once


def cancel_order(task: Task) -> None:
    Order.where(id=task.payload["order"]).update(state="cancelled")


def place_order(queue: TaskQueue) -> tuple[int, str]:
    """The order and its compensation, armed 60 s ahead, in one local transaction."""
    with Transaction("jobs"):
        order = Order.create(state="placed")
        undo = queue.enqueue("cancel_order", {"order": order.id}, delay_s=60)
    return order.id, undo


def test_an_armed_compensation_runs_when_the_step_fails_or_dies_and_is_cancelled_on_success(
    config: dict[str, Any],
) -> None:
    clock = Clock()
    queue = TaskQueue("jobs", clock=clock)
    worker = TaskWorker(queue, {"cancel_order": cancel_order})
    kept, undo = place_order(queue)
    with queue.armed(undo):
        pass  # the step succeeded
    failed, _ = place_order(queue)
    with pytest.raises(RuntimeError):
        with queue.armed(queue.tasks("pending")[0].id):
            raise RuntimeError("the step failed")
    crashed, _ = place_order(queue)  # its process "dies": never disarmed
    assert worker.drain() == 1  # the failed step's undo, due at once
    clock.advance(61)
    assert worker.drain() == 1  # the crashed step's undo, once its delay ran out
    states = {o.id: o.state for o in Order.all()}
    assert states == {kept: "placed", failed: "cancelled", crashed: "cancelled"}
    assert sorted(t.status for t in queue.tasks()) == ["cancelled", "done", "done"]
    # A compensation taken by a worker before the step ended cannot be cancelled: said loudly.
    _, late = place_order(queue)
    with pytest.raises(TwostepError, match="could not be cancelled"):
        with queue.armed(late):
            clock.advance(61)
            worker.drain()
