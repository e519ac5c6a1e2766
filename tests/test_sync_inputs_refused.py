"""The sync helpers refuse bad arguments with clear errors before touching a database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from twostep.client import ActiveRecord, TwostepError
from twostep.sync import Backoff, BatchSync, Event, Outbox, OutboxRelay, TaskQueue


class Source(ActiveRecord):
    __connection__ = "source"


class Target(ActiveRecord):
    __connection__ = "target"


class Unbound(ActiveRecord):
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ""}, ValueError, "name is a string"),
        ({"batch_size": 0}, ValueError, "batch_size is a positive integer"),
        ({"batch_size": True}, ValueError, "batch_size is a positive integer"),
        ({"key": "id"}, TypeError, "key is a sequence of field names"),
        ({"target": Unbound}, TwostepError, "Unbound needs __connection__"),
    ],
)
def test_batch_sync_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"name": "s", "source": Source, "target": Target, **kwargs}
    name, source, target = arguments.pop("name"), arguments.pop("source"), arguments.pop("target")
    with pytest.raises(error, match=message):
        BatchSync(name, source, target, **arguments)


def test_an_event_needs_a_topic_an_id_and_a_json_object_payload() -> None:
    with pytest.raises(ValueError, match="topic"):
        Event("", {})
    with pytest.raises(ValueError, match="id"):
        Event("t", {}, "")
    with pytest.raises(TypeError, match="payload is a dict"):
        Event("t", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a JSON object"):
        Event.from_body("t", "id", b"[1, 2]")
    with pytest.raises(ValueError):
        Event("t", {"x": float("nan")}).body()
    assert Event.from_body("t", "id", Event("t", {"b": 1, "a": [2]}, "id").body()) == Event(
        "t", {"a": [2], "b": 1}, "id"
    )


def test_relay_and_task_queue_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        OutboxRelay(Outbox("source"), publisher=None, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        TaskQueue("source", max_attempts=0)
    with pytest.raises(ValueError, match="claim_s"):
        TaskQueue("source", claim_s=0)
    with pytest.raises(TwostepError, match="aware datetimes"):
        TaskQueue("source", clock=datetime.now)._now()


def test_the_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    backoff = Backoff(base_s=2, factor=2, max_s=20)
    assert [backoff.delay_s(n) for n in range(1, 6)] == [2, 4, 8, 16, 20]
