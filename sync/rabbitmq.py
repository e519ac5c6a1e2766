"""RabbitMQ for the outbox (needs `pika`: `pip install twostep[rabbitmq]`): a publisher with
publisher confirms for `OutboxRelay`, and a consumer that acknowledges a message only after
its handler returned (so after `apply_once` committed).

    publisher = RabbitMQPublisher("amqp://guest:guest@127.0.0.1:5672/%2F", exchange="changes")
    consumer = RabbitMQConsumer("amqp://...", queue="analytics")
    consumer.consume(lambda event: apply_once("analytics", event.id, lambda: ...), stop=...)

Neither declares exchanges or queues: the topology (a durable exchange, a durable queue bound
to it) is the application's, made once like its tables. Messages are persistent
(delivery_mode 2), carry the event id as `message_id`, the topic as `type` and routing key,
and the payload as a JSON body. A lost connection raises pika's error; the caller restarts
(nothing is lost: unconfirmed events stay unpublished, unacknowledged messages return to
the queue).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import pika
import pika.exceptions

from ._events import Event

__all__ = ["RabbitMQConsumer", "RabbitMQPublisher"]


def _parameters(broker: str | pika.ConnectionParameters) -> pika.ConnectionParameters:
    if isinstance(broker, str):
        return pika.URLParameters(broker)
    return broker


class _Connected:
    """One blocking connection and channel, opened on first use, closed by `close()`."""

    def __init__(self, broker: str | pika.ConnectionParameters):
        self._parameters = _parameters(broker)
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None

    def _open(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = pika.BlockingConnection(self._parameters)
            self._channel = self._connection.channel()
            self._opened(self._channel)
        return self._channel

    def _opened(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        """Set the new channel up (a subclass's hook)."""

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            connection.close()

    def __enter__(self) -> _Connected:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RabbitMQPublisher(_Connected):
    """Publishes events to `exchange`, routing key `routing_key(event)` (default: the topic),
    on a channel in confirm mode: `publish()` returns once the broker confirmed the message,
    and raises `pika.exceptions.UnroutableError` if no queue took it (mandatory) or
    `NackError` if the broker refused it. A `Publisher` for `OutboxRelay`."""

    def __init__(
        self,
        broker: str | pika.ConnectionParameters,
        exchange: str,
        *,
        routing_key: Callable[[Event], str] = lambda event: event.topic,
    ):
        super().__init__(broker)
        self.exchange = exchange
        self.routing_key = routing_key

    def _opened(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        channel.confirm_delivery()

    def publish(self, event: Event) -> None:
        self._open().basic_publish(
            self.exchange,
            self.routing_key(event),
            event.body(),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=event.id,
                type=event.topic,
            ),
            mandatory=True,
        )


class RabbitMQConsumer(_Connected):
    """Takes events from `queue`, at most `prefetch` unacknowledged at a time."""

    def __init__(self, broker: str | pika.ConnectionParameters, queue: str, *, prefetch: int = 100):
        super().__init__(broker)
        self.queue = queue
        self.prefetch = prefetch

    def _opened(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        channel.basic_qos(prefetch_count=self.prefetch)

    def consume(
        self,
        handle: Callable[[Event], object],
        *,
        stop: threading.Event | None = None,
        idle_s: float | None = None,
    ) -> int:
        """Call `handle(event)` for each message, then acknowledge it; returns how many were
        handled. Ends when `stop` is set (checked at least every second) or, with `idle_s`,
        once no message came for that many seconds. An exception from `handle` propagates
        unacknowledged, after closing the connection, which returns the message (and those
        prefetched) to the queue. A message that is not an outbox event (no message_id or
        type, or a body that is not a JSON object) is rejected without requeue (dead-lettered
        where the queue has a dead-letter exchange) and raises ValueError."""
        channel = self._open()
        handled = 0
        wait = 1.0 if idle_s is None else min(idle_s, 1.0)
        quiet = 0.0
        try:
            for method, properties, body in channel.consume(self.queue, inactivity_timeout=wait):
                if stop is not None and stop.is_set():
                    break
                if method is None:
                    quiet += wait
                    if idle_s is not None and quiet >= idle_s:
                        break
                    continue
                quiet = 0.0
                try:
                    if not properties.message_id or not properties.type:
                        raise ValueError("it has no message_id or type")
                    event = Event.from_body(properties.type, properties.message_id, body)
                except (ValueError, TypeError) as exc:
                    # Redelivering it would fail the same way for ever: reject it (to the
                    # queue's dead-letter exchange, if it has one) and say so.
                    channel.basic_nack(method.delivery_tag, requeue=False)
                    raise ValueError(
                        f"a message on {self.queue!r} is not an outbox event ({exc}); it was "
                        "rejected without requeue"
                    ) from exc
                handle(event)
                channel.basic_ack(method.delivery_tag)
                handled += 1
        except BaseException:
            self.close()  # the message in hand and those prefetched go back to the queue
            raise
        if channel.is_open:
            channel.cancel()  # requeues what was prefetched and not handled
        return handled
