"""The transactional outbox: change events are rows of the source database, written in the
same local transaction as the change they describe, and a relay publishes them to a broker.

    outbox = Outbox("users")                      # outbox_events on the users database
    with Transaction("users"):
        user = User.create(name="ann")
        outbox.add("user.saved", {"id": user.id, "name": user.name})
    # both rows, or neither

    OutboxRelay(outbox, RabbitMQPublisher(url, "changes")).run(stop=stopping)

The relay marks an event published only after the broker confirmed it, in the transaction
that locked it (`FOR UPDATE SKIP LOCKED`: relays running at once take different events): a
relay that dies after a confirm and before the mark publishes that event again when it
restarts. Delivery is at least once; consumers dedupe by event id (`apply_once`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from twostep.client import ActiveRecord, Transaction

from ._events import Event
from ._tables import create_table

__all__ = ["Outbox", "OutboxRelay", "Publisher"]


class _OutboxRow(ActiveRecord):
    __tablename__ = "outbox_events"


class Publisher(Protocol):
    """Where a relay sends events (`twostep.sync.rabbitmq.RabbitMQPublisher` for RabbitMQ)."""

    def publish(self, event: Event) -> None:
        """Send `event`, and return only once the broker has taken responsibility for it
        (a publisher confirm); raise if it refused the event or the outcome is not known."""
        ...


class Outbox:
    """The outbox table `outbox_events` on the named connection (the source database):
    `seq` (publishing order), `event_id` (unique), `topic`, `payload` (JSON text),
    `created_at`, `published_at` (UTC; NULL until the broker confirmed it). PostgreSQL or
    MariaDB (the relay locks rows with SKIP LOCKED)."""

    def __init__(self, connection: str):
        self.connection = connection

    def create_table(self) -> None:
        create_table(
            self.connection,
            _OutboxRow.__tablename__,
            {
                "seq": "{serial}",
                "event_id": "{key} NOT NULL UNIQUE",
                "topic": "{key} NOT NULL",
                "payload": "{text} NOT NULL",
                "created_at": "{instant} NOT NULL",
                "published_at": "{instant} NULL",
            },
            # What the relay looks for: the unpublished events, in seq order.
            indexes={"outbox_events_unpublished": ("published_at", "seq")},
        )

    def add(self, topic: str, payload: Mapping[str, Any], *, event_id: str | None = None) -> Event:
        """Write an event. Inside `Transaction(connection)` (or `global_transaction()`) it
        commits or rolls back with the block's other writes: call it in the block that makes
        the change. Outside any, it commits alone: no better than publishing directly."""
        event = Event(topic, payload) if event_id is None else Event(topic, payload, event_id)
        _OutboxRow.using(self.connection).create(
            event_id=event.id,
            topic=event.topic,
            payload=event.body().decode(),
            created_at=datetime.now(UTC),
        )
        return event

    def unpublished(self) -> int:
        """How many events the broker has not confirmed yet."""
        return _OutboxRow.using(self.connection).where(published_at=None).count()


class OutboxRelay:
    """Publishes the outbox's events in `seq` order, `batch_size` per transaction."""

    def __init__(self, outbox: Outbox, publisher: Publisher, *, batch_size: int = 100):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size is a positive integer, not {batch_size!r}")
        self.outbox = outbox
        self.publisher = publisher
        self.batch_size = batch_size

    def relay_batch(self) -> int:
        """Lock up to `batch_size` unpublished events (skipping those another relay holds),
        publish each (confirmed), then mark them published, all in one local transaction.
        Returns how many were published. An exception (broker down, event refused) rolls
        the marks back: the events stay unpublished and are sent again by the next call."""
        rows = _OutboxRow.using(self.outbox.connection)
        with Transaction(self.outbox.connection):
            batch = (
                rows.where(published_at=None)
                .order_by("seq")
                .limit(self.batch_size)
                .for_update(skip_locked=True)
                .all()
            )
            for row in batch:
                self.publisher.publish(
                    Event.from_body(row.topic, row.event_id, row.payload.encode())
                )
            if batch:
                rows.where(seq=[row.seq for row in batch]).update(published_at=datetime.now(UTC))
        return len(batch)

    def relay_all(self) -> int:
        """Publish until no unpublished event is left that another relay does not hold."""
        total = 0
        while published := self.relay_batch():
            total += published
        return total

    def run(self, stop: threading.Event, *, idle_s: float = 0.5) -> None:
        """Relay until `stop` is set, waiting `idle_s` seconds whenever nothing was left."""
        while not stop.is_set():
            if not self.relay_all():
                stop.wait(idle_s)
