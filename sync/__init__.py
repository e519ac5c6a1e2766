"""twostep.sync: keeping another database in sync with the one the application writes.

Each strategy is a small helper on twostep.client's public API (README "Keeping another
database in sync" says what each guarantees and what it does not):

- `BatchSync` (with `SyncLog`, `Position`): copy the rows changed since a (timestamp, key)
  high-water mark, a batch at a time, with idempotent upserts; resumable after a crash.
- `Mirrored`: real-time sync through hooks: a model's `save()` and `delete()` write its copy
  in another database inside the same `global_transaction()`.
- `Outbox`, `OutboxRelay`, `Publisher`, `Event`: the transactional outbox: events written in
  the source row's local transaction, relayed to a broker with confirms (at least once);
  `apply_once` (with `ProcessedEvent`) applies each event id once on the consuming side.
  `twostep.sync.rabbitmq` has the RabbitMQ publisher and consumer (needs pika: the
  `rabbitmq` extra).
- `TaskQueue`, `TaskWorker`, `PendingTask`, `Task`, `Backoff`: pending tasks and
  compensating actions: a task table, workers that claim with SKIP LOCKED, retries with
  exponential backoff, `failed` after N attempts, visible to operators.
"""

from ._batch import BatchSync, Position, SyncLog
from ._events import Event, ProcessedEvent, apply_once
from ._mirror import Mirrored
from ._outbox import Outbox, OutboxRelay, Publisher
from ._tasks import Backoff, PendingTask, Task, TaskQueue, TaskWorker

__all__ = [
    "Backoff",
    "BatchSync",
    "Event",
    "Mirrored",
    "Outbox",
    "OutboxRelay",
    "PendingTask",
    "Position",
    "ProcessedEvent",
    "Publisher",
    "SyncLog",
    "Task",
    "TaskQueue",
    "TaskWorker",
    "apply_once",
]
