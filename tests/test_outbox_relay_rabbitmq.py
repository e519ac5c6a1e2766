"""The transactional outbox end to end against the real RabbitMQ: events written in the
source row's local transaction on PostgreSQL, relayed with publisher confirms, applied to
MariaDB once per event id. A relay SIGKILLed after publishing and before marking loses no
event when restarted; the duplicates it sends are absorbed by the consumer (counts exact).

Each test declares its own exchange and queue (named with a uuid) and deletes them."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from twostep.client import ActiveRecord, ConnectionManager, Transaction
from twostep.sync import Event, Outbox, OutboxRelay, ProcessedEvent, apply_once
from twostep.sync.rabbitmq import RabbitMQConsumer, RabbitMQPublisher
from twostep.testing import run_in_process

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


class User(ActiveRecord):  # PostgreSQL
    __connection__ = "users"


class UserEvent(ActiveRecord):  # MariaDB: one row per applied event (counts duplicates)
    __connection__ = "analytics"


@pytest.fixture
def broker() -> Iterator[str]:
    """A fresh exchange and a queue bound to it (one name, a uuid); deleted afterwards."""
    name = f"twostep-test-{uuid.uuid4()}"
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    channel = connection.channel()
    channel.exchange_declare(name, exchange_type="topic", durable=False, auto_delete=False)
    channel.queue_declare(name, durable=False, auto_delete=False)
    channel.queue_bind(name, name, routing_key="#")
    yield name
    channel.queue_delete(name)
    channel.exchange_delete(name)
    connection.close()


def queued(name: str) -> int:
    """Messages ready in the queue."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    try:
        return connection.channel().queue_declare(name, passive=True).method.message_count
    finally:
        connection.close()


@pytest.fixture
def configs(
    pg_config: dict[str, Any], maria_config: dict[str, Any]
) -> Iterator[dict[str, dict[str, Any]]]:
    configs = {"users": pg_config, "analytics": maria_config}
    connect(configs)
    ConnectionManager.get_connection("users").execute(
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100))"
    )
    ConnectionManager.get_connection("analytics").execute(
        "CREATE TABLE user_events (id INT AUTO_INCREMENT PRIMARY KEY, user_id INT NOT NULL,"
        " name VARCHAR(100)) ENGINE=InnoDB"
    )
    Outbox("users").create_table()
    ProcessedEvent.create_table("analytics")
    yield configs
    ConnectionManager.close_all()


def connect(configs: dict[str, dict[str, Any]]) -> None:
    for name, config in configs.items():
        ConnectionManager.configure(name, config)


def save_users(ids: range) -> None:
    """Each user and its event in one local transaction on PostgreSQL."""
    outbox = Outbox("users")
    for i in ids:
        with Transaction("users"):
            User.create(id=i, name=f"u{i}")
            outbox.add("user.saved", {"id": i, "name": f"u{i}"})


def apply(event: Event) -> bool:
    """Not idempotent by itself (inserts a row per call): apply_once makes it so."""
    return apply_once(
        "analytics",
        event.id,
        lambda: UserEvent.create(user_id=event.payload["id"], name=event.payload["name"]),
    )


def applied() -> list[int]:
    return sorted(e.user_id for e in UserEvent.all())


def test_events_of_committed_changes_reach_the_analytics_database_and_rolled_back_ones_never(
    configs: dict[str, dict[str, Any]], broker: str
) -> None:
    save_users(range(1, 4))
    with pytest.raises(RuntimeError):
        with Transaction("users"):
            User.create(id=99, name="lost")
            Outbox("users").add("user.saved", {"id": 99, "name": "lost"})
            raise RuntimeError("the change fails: its event goes with it")
    with RabbitMQPublisher(BROKER, broker) as publisher:
        assert OutboxRelay(Outbox("users"), publisher, batch_size=2).relay_all() == 3
    assert Outbox("users").unpublished() == 0
    with RabbitMQConsumer(BROKER, broker) as consumer:
        assert consumer.consume(apply, idle_s=0.5) == 3
    assert applied() == [1, 2, 3]
    assert queued(broker) == 0


def test_apply_once_applies_an_event_id_once_and_keeps_nothing_of_a_failed_apply(
    configs: dict[str, dict[str, Any]],
) -> None:
    event = Event("user.saved", {"id": 1, "name": "ann"})
    assert apply(event) is True
    assert apply(event) is False

    def fails() -> None:
        UserEvent.create(user_id=2, name="bob")
        raise RuntimeError("the apply fails after its insert")

    with pytest.raises(RuntimeError):
        apply_once("analytics", "event-2", fails)
    assert applied() == [1]
    assert apply_once("analytics", "event-2", lambda: UserEvent.create(user_id=2)) is True
    assert applied() == [1, 2]


class DyingPublisher:
    """Publishes (confirmed), and SIGKILLs its process right after the `die_after`-th
    confirm: the relay has not marked that batch."""

    def __init__(self, inner: RabbitMQPublisher, die_after: int):
        self.inner = inner
        self.die_after = die_after
        self.published = 0

    def publish(self, event: Event) -> None:
        self.inner.publish(event)
        self.published += 1
        if self.published == self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)


def relay_until_killed(configs: dict[str, dict[str, Any]], exchange: str, die_after: int) -> None:
    connect(configs)
    publisher = DyingPublisher(RabbitMQPublisher(BROKER, exchange), die_after)
    OutboxRelay(Outbox("users"), publisher, batch_size=10).relay_all()


def test_a_relay_killed_between_confirm_and_mark_loses_no_event_and_duplicates_are_absorbed(
    configs: dict[str, dict[str, Any]], broker: str
) -> None:
    save_users(range(1, 31))
    run = run_in_process(relay_until_killed, args=(configs, broker, 15))
    assert run.killed, run.describe()
    # Batch 1 (10 events) was confirmed and marked; 5 of batch 2 were confirmed, not marked.
    assert queued(broker) == 15
    assert Outbox("users").unpublished() == 20
    with RabbitMQPublisher(BROKER, broker) as publisher:
        assert OutboxRelay(Outbox("users"), publisher, batch_size=10).relay_all() == 20
    assert Outbox("users").unpublished() == 0
    assert queued(broker) == 35  # 5 events twice
    outcomes: list[bool] = []
    with RabbitMQConsumer(BROKER, broker) as consumer:
        assert consumer.consume(lambda e: outcomes.append(apply(e)), idle_s=0.5) == 35
    assert outcomes.count(False) == 5
    assert applied() == list(range(1, 31))  # every event once: none lost, none twice
    assert ProcessedEvent.using("analytics").count() == 30


def test_a_failing_apply_leaves_its_event_on_the_queue_and_a_foreign_message_is_rejected(
    configs: dict[str, dict[str, Any]], broker: str
) -> None:
    save_users(range(1, 3))
    with RabbitMQPublisher(BROKER, broker) as publisher:
        OutboxRelay(Outbox("users"), publisher).relay_all()

    def broken(event: Event) -> None:
        raise RuntimeError("the analytics database is down")

    with RabbitMQConsumer(BROKER, broker, prefetch=1) as consumer:
        with pytest.raises(RuntimeError):
            consumer.consume(broken, idle_s=0.5)
    assert queued(broker) == 2  # nothing acknowledged
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    connection.channel().basic_publish(broker, "x", b"not json")  # no id, no type
    connection.close()
    with RabbitMQConsumer(BROKER, broker) as consumer:
        with pytest.raises(ValueError, match="not an outbox event"):
            consumer.consume(apply, idle_s=0.5)  # the two events first, then the foreign one
    assert applied() == [1, 2]
    assert queued(broker) == 0  # rejected, not redelivered for ever
