"""Change events: what the outbox stores and the broker carries, and applying one exactly
once to a database (`apply_once`, recorded in processed_events in the same transaction)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twostep.client import ActiveRecord, DatabaseError, Transaction

from ._tables import create_table, is_duplicate_key

__all__ = ["Event", "ProcessedEvent", "apply_once"]


@dataclass(frozen=True)
class Event:
    """One change event: `id` (a UUID's text, unique per event: consumers dedupe by it),
    `topic` (what happened, e.g. "user.saved"; the routing key on RabbitMQ) and `payload`
    (a JSON object: str keys; values that `json.dumps` takes)."""

    topic: str
    payload: Mapping[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not 0 < len(self.topic) <= 191:
            raise ValueError(f"an event's topic is a string of 1 to 191 characters: {self.topic!r}")
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 191:
            raise ValueError(f"an event's id is a string of 1 to 191 characters: {self.id!r}")
        if not isinstance(self.payload, Mapping):
            raise TypeError(f"an event's payload is a dict, not {type(self.payload).__name__}")

    def body(self) -> bytes:
        """The payload as JSON (UTF-8); `TypeError`/`ValueError` for what JSON cannot hold."""
        return json.dumps(self.payload, sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_body(cls, topic: str, event_id: str, body: bytes) -> Event:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError(f"event {event_id}: the body is not a JSON object")
        return cls(topic, payload, event_id)


class ProcessedEvent(ActiveRecord):
    """The ids applied to a database by `apply_once` (table processed_events, bound per use):
    `event_id`, `processed_at` (UTC)."""

    __tablename__ = "processed_events"

    @classmethod
    def create_table(cls, connection: str) -> None:
        """Create processed_events on the named connection if it does not exist."""
        create_table(
            connection,
            cls.__tablename__,
            {"event_id": "{key} PRIMARY KEY", "processed_at": "{instant} NOT NULL"},
        )


def apply_once(connection: str, event_id: str, apply: Callable[[], object]) -> bool:
    """Run `apply()` in a local transaction on `connection` together with the row that records
    `event_id` in processed_events; True if it ran, False if that id was applied before (by
    this or a concurrent consumer: the second insert waits for the first to commit, then
    finds the key). `apply()` writes on `connection` only. An exception from it rolls both
    back and propagates, so a redelivery applies the event again."""
    recorded = False
    try:
        with Transaction(connection):
            ProcessedEvent.using(connection).create(
                event_id=event_id, processed_at=datetime.now(UTC)
            )
            recorded = True
            apply()
    except DatabaseError as exc:
        if not recorded and is_duplicate_key(exc):
            return False
        raise
    return True
