"""The seed's "Message-queue synchronization", through a transactional outbox: a user saved
on PostgreSQL publishes a change event to RabbitMQ, and a consumer applies it to the analytics
database (MariaDB) once.

    .venv/bin/python examples/queue_sync.py

The seed published after the commit, so a crash between the two lost the event. Here the
event is a row of outbox_events written in the user's own transaction (it exists if and only
if the user committed); `OutboxRelay` publishes it with publisher confirms and marks it
published only then (at least once), and the consumer's `apply_once` records the event id in
processed_events with the change, so a duplicate changes nothing. Needs RabbitMQ on
127.0.0.1:5672 (guest/guest, or $TWOSTEP_EXAMPLES_BROKER): the exchange and queue are named
for this run and deleted at the end. Starts its own throwaway databases: examples/_setup.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pika
from _setup import Example, example

from twostep.client import ActiveRecord, Transaction, get_connection
from twostep.sync import Event, Outbox, OutboxRelay, ProcessedEvent, apply_once
from twostep.sync.rabbitmq import RabbitMQConsumer, RabbitMQPublisher


class User(ActiveRecord):  # users (id, name, email)
    __connection__ = "main"  # PostgreSQL


class AnalyticsUserData(ActiveRecord):  # analytics_user_data (user_id, name, email)
    __connection__ = "analytics"  # MariaDB


outbox = Outbox("main")


def register(name: str, email: str, *, fail: bool = False) -> Event:
    """The user and its event commit together, or neither does; the event."""
    with Transaction("main"):
        user = User.create(name=name, email=email)
        event = outbox.add("user.saved", {"id": user.id, "name": user.name, "email": user.email})
        if fail:
            raise RuntimeError("the sign-up form was submitted twice")
    return event


def apply(event: Event) -> bool:
    """The consumer's handler: the analytics row and the event id commit together."""
    user = event.payload
    return apply_once(
        "analytics",
        event.id,
        lambda: AnalyticsUserData.insert_or_update(
            {"user_id": user["id"], "name": user["name"], "email": user["email"]},
            conflict_keys=["user_id"],
        ),
    )


@contextmanager
def topology(broker: str) -> Iterator[str]:
    """An exchange and a queue bound to it, named for this run; deleted at the end."""
    name = f"twostep-example-{uuid.uuid4()}"
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        channel = connection.channel()
        channel.exchange_declare(name, exchange_type="topic", durable=True)
        channel.queue_declare(name, durable=True)
        channel.queue_bind(name, name, routing_key="user.*")
        try:
            yield name
        finally:
            channel.queue_delete(name)
            channel.exchange_delete(name)
    finally:
        connection.close()


def main(ex: Example) -> None:
    get_connection("main").execute(
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name VARCHAR(100), email VARCHAR(255))"
    )
    get_connection("analytics").execute(
        "CREATE TABLE analytics_user_data (user_id INT PRIMARY KEY, name VARCHAR(100),"
        " email VARCHAR(255)) ENGINE=InnoDB"
    )
    outbox.create_table()
    ProcessedEvent.create_table("analytics")

    ann_saved = register("ann", "ann@example.com")
    register("bob", "bob@example.com")
    try:
        register("ann", "ann@example.com", fail=True)
    except RuntimeError as exc:
        print(f"rolled back ({exc}): no user, no event")
    print(f"users={User.count()}, unpublished events={outbox.unpublished()}")

    with topology(ex.broker) as name:
        with RabbitMQPublisher(ex.broker, exchange=name) as publisher:
            print(f"relayed {OutboxRelay(outbox, publisher).relay_all()} events to {name}")
            # A relay that died after the broker's confirm and before marking the event
            # publishes it again when it restarts: the same event id, twice on the queue.
            publisher.publish(ann_saved)
        applied = []
        with RabbitMQConsumer(ex.broker, queue=name) as consumer:
            handled = consumer.consume(lambda event: applied.append(apply(event)), idle_s=0.5)
        print(
            f"consumed {handled} messages: applied {applied.count(True)}, "
            f"skipped {applied.count(False)} duplicate; "
            f"analytics_user_data={AnalyticsUserData.count()}"
        )
    assert {(a.user_id, a.email) for a in AnalyticsUserData.all()} == {
        (u.id, u.email) for u in User.all()
    }
    print(
        "queue sync: every committed user reached analytics once; the exchange and queue are gone"
    )


if __name__ == "__main__":
    with example(postgresql=["main"], mariadb=["analytics"]) as ex:
        main(ex)
