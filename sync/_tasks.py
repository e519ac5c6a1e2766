"""Pending tasks: work that must happen after a commit (a compensating action, a call to a
system that cannot join the transaction), kept in a table until a worker has done it.

    queue = TaskQueue("orders")                          # pending_tasks on that database
    with Transaction("orders"):
        order = Order.create(total=30)
        undo = queue.enqueue("cancel_order", {"id": order.id}, delay_s=60)   # armed
    with queue.armed(undo):       # step failed: the undo runs now; succeeded: it is cancelled
        charge_card(order)        # a crash here: the undo runs once the 60 s have passed

    TaskWorker(queue, {"cancel_order": cancel_order}).run(stop=stopping)

A worker claims one due task at a time (`FOR UPDATE SKIP LOCKED`: workers never wait for
each other's tasks), commits the claim (attempts + 1, `claimed_until` = now + `claim_s`),
runs the handler outside any transaction, then marks the task `done`; a handler that raises
puts it back as `pending` with an exponential backoff, or `failed` after `max_attempts`.
A worker that dies holds its claim until it expires; then another worker runs the task
again. Handlers therefore run at least once and must be idempotent by task id: a handler
whose effect is on one database records it with `apply_once(connection, task.key, ...)`.
`failed()` lists what operators must look at; `retry()` puts a task back.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from twostep.client import ActiveRecord, Transaction, TwostepError

from ._tables import create_table

__all__ = ["Backoff", "PendingTask", "Task", "TaskQueue", "TaskWorker"]

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"


class PendingTask(ActiveRecord):
    """A row of pending_tasks (bound per use: `PendingTask.using(connection)`): `id`, `kind`,
    `payload` (JSON text), `status` (pending, running, done, failed, cancelled), `attempts`,
    `run_after`, `claimed_by`, `claimed_until`, `last_error`, `created_at`, `updated_at`
    (instants in UTC)."""

    __tablename__ = "pending_tasks"


@dataclass(frozen=True)
class Task:
    """A task as read (`payload` decoded). `attempts` counts claims, this one included."""

    id: str
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    run_after: datetime
    claimed_by: str | None
    last_error: str | None
    updated_at: datetime

    @property
    def key(self) -> str:
        """The id `apply_once` records for this task's effect: "task:<id>"."""
        return f"task:{self.id}"

    @classmethod
    def of(cls, row: PendingTask) -> Task:
        return cls(
            row.id,
            row.kind,
            json.loads(row.payload),
            row.status,
            int(row.attempts),
            row.run_after,
            row.claimed_by,
            row.last_error,
            row.updated_at,
        )


@dataclass(frozen=True)
class Backoff:
    """The wait before attempt n + 1 after attempt n failed: `base_s * factor ** (n - 1)`
    seconds, at most `max_s`. (A stored schedule, not a retry loop in a process: a retry
    library's in-process sleep would not survive the worker.)"""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0

    def delay_s(self, attempt: int) -> float:
        return float(min(self.max_s, self.base_s * self.factor ** max(0, attempt - 1)))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TaskQueue:
    """The table pending_tasks on the named connection (PostgreSQL or MariaDB 10.6+).

    - `max_attempts`: claims before a task whose handler keeps failing is `failed`;
    - `backoff`: the waits between attempts (`Backoff`);
    - `claim_s`: how long a claim holds (seconds): longer than any handler runs, since a
      task whose claim expired is run again by another worker;
    - `clock`: the current instant (an aware datetime); every worker of a queue should see
      the same time, give or take much less than `claim_s`."""

    def __init__(
        self,
        connection: str,
        *,
        max_attempts: int = 5,
        backoff: Backoff = Backoff(),  # frozen: one shared default is safe
        claim_s: float = 60.0,
        clock: Callable[[], datetime] = _utc_now,
    ):
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts is a positive integer, not {max_attempts!r}")
        if not claim_s > 0:
            raise ValueError(f"claim_s is a positive number of seconds, not {claim_s!r}")
        self.connection = connection
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.claim_s = claim_s
        self.clock = clock

    def create_table(self) -> None:
        create_table(
            self.connection,
            PendingTask.__tablename__,
            {
                "id": "{key} PRIMARY KEY",
                "kind": "{key} NOT NULL",
                "payload": "{text} NOT NULL",
                "status": "VARCHAR(20) NOT NULL",
                "attempts": "INT NOT NULL",
                "run_after": "{instant} NOT NULL",
                "claimed_by": "{key} NULL",
                "claimed_until": "{instant} NULL",
                "last_error": "{text} NULL",
                "created_at": "{instant} NOT NULL",
                "updated_at": "{instant} NOT NULL",
            },
            # What claim() looks for: the due tasks, in run_after order.
            indexes={"pending_tasks_due": ("status", "run_after")},
        )

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise TwostepError("a TaskQueue's clock must return aware datetimes (UTC)")
        return now.astimezone(UTC)

    def _rows(self) -> Any:
        return PendingTask.using(self.connection)

    # -- producers -----------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        task_id: str | None = None,
        delay_s: float = 0.0,
    ) -> str:
        """Add a task due in `delay_s` seconds; returns its id (a new UUID unless given).
        Inside `Transaction(connection)` or `global_transaction()` it commits with the
        block's other writes. A `task_id` already queued raises `DatabaseError`."""
        now = self._now()
        task_id = str(uuid.uuid4()) if task_id is None else task_id
        self._rows().create(
            id=task_id,
            kind=kind,
            payload=json.dumps(dict(payload), sort_keys=True, allow_nan=False),
            status=PENDING,
            attempts=0,
            run_after=now + timedelta(seconds=delay_s),
            created_at=now,
            updated_at=now,
        )
        return task_id

    def release(self, task_id: str) -> bool:
        """Make a pending task due now; False if it is not pending."""
        now = self._now()
        return bool(
            self._rows().where(id=task_id, status=PENDING).update(run_after=now, updated_at=now)
        )

    def cancel(self, task_id: str) -> bool:
        """Cancel a pending task (it never runs); False if it is not pending any more."""
        return bool(
            self._rows()
            .where(id=task_id, status=PENDING)
            .update(status=CANCELLED, updated_at=self._now())
        )

    @contextlib.contextmanager
    def armed(self, task_id: str) -> Iterator[None]:
        """Around a step that a queued compensation (`task_id`, enqueued with a delay longer
        than the step can take) undoes: if the block raises, the compensation is made due
        now; if it returns, cancelled. If the process dies in the block, it runs when its
        delay has passed. `TwostepError` if it could not be cancelled: it was already
        claimed (the delay was too short), so the step's effect is being undone."""
        try:
            yield
        except BaseException:
            self.release(task_id)
            raise
        if not self.cancel(task_id):
            raise TwostepError(
                f"compensation {task_id} could not be cancelled: a worker took it (its delay "
                "ran out before the step finished); the step is being undone"
            )

    # -- workers -------------------------------------------------------------------------------

    def claim(self, worker: str) -> Task | None:
        """Claim the due task with the earliest `run_after` (pending and due, or running with
        an expired claim), skipping rows other workers have locked; None if there is none.
        A task whose claim expired on its last attempt is marked `failed` instead."""
        while True:
            now = self._now()
            with Transaction(self.connection):
                row = (
                    self._rows()
                    .where(
                        "(status = ? AND run_after <= ?) OR (status = ? AND claimed_until <= ?)",
                        PENDING,
                        now,
                        RUNNING,
                        now,
                    )
                    .order_by("run_after", "id")
                    .for_update(skip_locked=True)
                    .first()
                )
                if row is None:
                    return None
                mine = self._rows().where(id=row.id)
                if row.status == RUNNING and row.attempts >= self.max_attempts:
                    mine.update(
                        status=FAILED,
                        last_error=f"claim of {row.claimed_by} expired on the last attempt",
                        updated_at=now,
                    )
                    continue
                attempts = int(row.attempts) + 1
                mine.update(
                    status=RUNNING,
                    attempts=attempts,
                    claimed_by=worker,
                    claimed_until=now + timedelta(seconds=self.claim_s),
                    updated_at=now,
                )
                return Task.of(self._rows().where(id=row.id).first())

    def _settle(self, task: Task, **values: Any) -> bool:
        """Change a claimed task, if the claim is still this one (same worker and attempt:
        a worker whose claim expired and was taken over changes nothing)."""
        claim = self._rows().where(
            id=task.id, status=RUNNING, claimed_by=task.claimed_by, attempts=task.attempts
        )
        return bool(claim.update(claimed_until=None, updated_at=self._now(), **values))

    def complete(self, task: Task) -> bool:
        """Mark a claimed task done; False if its claim was lost meanwhile."""
        return self._settle(task, status=DONE, last_error=None)

    def fail(self, task: Task, error: str) -> bool:
        """Record a failed attempt: `pending` again after the backoff, or `failed` after the
        last attempt. False if its claim was lost meanwhile."""
        if task.attempts >= self.max_attempts:
            return self._settle(task, status=FAILED, last_error=error)
        due = self._now() + timedelta(seconds=self.backoff.delay_s(task.attempts))
        return self._settle(task, status=PENDING, run_after=due, last_error=error)

    # -- operators -----------------------------------------------------------------------------

    def tasks(self, status: str | None = None) -> list[Task]:
        """Tasks (with one status, or all), oldest first."""
        query = self._rows() if status is None else self._rows().where(status=status)
        return [Task.of(row) for row in query.order_by("created_at", "id").all()]

    def failed(self) -> list[Task]:
        """The tasks that used up their attempts, with the last error: for operators."""
        return self.tasks(FAILED)

    def retry(self, task_id: str) -> bool:
        """Put a failed task back, due now, with its attempts reset; False if not failed."""
        now = self._now()
        return bool(
            self._rows()
            .where(id=task_id, status=FAILED)
            .update(status=PENDING, attempts=0, run_after=now, updated_at=now)
        )


class TaskWorker:
    """Runs due tasks of `queue` with `handlers` (kind -> `handler(task)`); a kind without a
    handler fails like a handler that raised. `name` identifies its claims (default:
    host:pid:random)."""

    def __init__(
        self,
        queue: TaskQueue,
        handlers: Mapping[str, Callable[[Task], object]],
        *,
        name: str | None = None,
    ):
        self.queue = queue
        self.handlers = dict(handlers)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run_once(self) -> Task | None:
        """Claim one due task and run it; the task as claimed, or None if none was due."""
        task = self.queue.claim(self.name)
        if task is None:
            return None
        handler = self.handlers.get(task.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for tasks of kind {task.kind!r}")
            handler(task)
        except Exception as exc:
            self.queue.fail(task, f"{type(exc).__name__}: {exc}")
        else:
            self.queue.complete(task)
        return task

    def drain(self) -> int:
        """Run tasks until none is due; returns how many ran."""
        ran = 0
        while self.run_once() is not None:
            ran += 1
        return ran

    def run(self, stop: threading.Event, *, idle_s: float = 1.0) -> None:
        """Run tasks until `stop` is set, waiting `idle_s` seconds whenever none was due."""
        while not stop.is_set():
            if not self.drain():
                stop.wait(idle_s)
