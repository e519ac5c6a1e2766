"""Batch sync with a high-water mark: copy the rows of a source model changed since the last
run to a target model, a batch at a time, with idempotent upserts.

    sync = BatchSync("users->analytics", User, UserAnalytics, changed_at="updated_at",
                     transform=lambda user: {"user_id": user.id, "name": user.name},
                     conflict_keys=["user_id"])
    SyncLog.create_table("analytics")    # once
    sync.run()                            # until caught up; returns the rows copied

The watermark is the (changed_at, key) of the last row copied, so rows that share a
timestamp are ordered by their key and a batch boundary between two of them loses neither.
It is kept in the target database (`SyncLog`, table sync_logs) and each batch's upserts and
its new watermark commit in one local transaction there: a crash anywhere in a batch leaves
the target and the watermark as they were after the previous batch, and the next run copies
that batch again (upserts: nothing is duplicated).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from twostep.client import ActiveRecord, Column, Transaction, TwostepError, get_connection

from ._tables import create_table

__all__ = ["BatchSync", "Position", "SyncLog"]


class SyncLog(ActiveRecord):
    """A named sync's watermark, one row per `BatchSync` name, in the target database
    (bound per use with `SyncLog.using(connection)`): `name`, `position` (JSON text of the
    `Position`) and `rows_synced` (rows copied by every batch so far)."""

    __tablename__ = "sync_logs"

    @classmethod
    def create_table(cls, connection: str) -> None:
        """Create sync_logs on the named connection if it does not exist."""
        create_table(
            connection,
            cls.__tablename__,
            {"name": "{key} PRIMARY KEY", "position": "{text} NOT NULL", "rows_synced": "BIGINT"},
        )


@dataclass(frozen=True)
class Position:
    """Where a sync stands: the (changed_at, key) of the last row it copied. Rows after it in
    (changed_at, key) order are still to copy."""

    changed_at: Any
    key: tuple[Any, ...]

    def to_json(self) -> str:
        return json.dumps({"changed_at": _tagged(self.changed_at), "key": list(self.key)})

    @classmethod
    def from_json(cls, text: str) -> Position:
        data = json.loads(text)
        return cls(_untagged(data["changed_at"]), tuple(data["key"]))


def _tagged(value: Any) -> Any:
    """A watermark value as JSON: datetimes (naive or aware) and dates by their ISO text."""
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    return value


def _untagged(value: Any) -> Any:
    if isinstance(value, dict):
        if "datetime" in value:
            return datetime.fromisoformat(value["datetime"])
        return date.fromisoformat(value["date"])
    return value


def _column(model: type[ActiveRecord], field: str) -> str:
    """The column a field of `model` names (a `Column` alias, else the field itself)."""
    attribute = getattr(model, field, None)
    return attribute.name if isinstance(attribute, Column) else field


def _watermark_value(value: Any, what: str) -> Any:
    if value is None or isinstance(value, bool) or not isinstance(value, int | str | date):
        raise TwostepError(
            f"{what} is {value!r}: a watermark column must hold datetimes, dates, integers or "
            "strings, never NULL"
        )
    return value


class BatchSync:
    """Copies rows of `source` changed since its watermark to `target`, in batches of
    `batch_size` (rows), ordered by (`changed_at`, `key`).

    - `changed_at`: the source field that every write sets (a datetime, date or integer
      version); NOT NULL, and set to a value no smaller than any already committed (see
      README "Keeping another database in sync": what this does not guarantee).
    - `key`: source fields that identify a row (its primary key, or a unique key).
    - `transform(row) -> dict | None`: the target row for a source instance (by target field
      names); None skips the row. Default: the source row's fields as they are.
    - `conflict_keys`: the target's key the upsert conflicts on (default: its primary key).

    The source and target models need a connection each (`__connection__`); they may be the
    same database or different ones. `SyncLog` must exist on the target's connection."""

    def __init__(
        self,
        name: str,
        source: type[ActiveRecord],
        target: type[ActiveRecord],
        *,
        changed_at: str = "updated_at",
        key: Sequence[str] = ("id",),
        transform: Callable[[ActiveRecord], Mapping[str, Any] | None] | None = None,
        conflict_keys: Sequence[str] | None = None,
        batch_size: int = 500,
    ):
        if not isinstance(name, str) or not 0 < len(name) <= 191:
            raise ValueError(f"a sync's name is a string of 1 to 191 characters, not {name!r}")
        if isinstance(key, str) or not key:
            raise TypeError(f"key is a sequence of field names, e.g. ('id',), not {key!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size is a positive integer, not {batch_size!r}")
        for model in (source, target):
            if not model.__connection__:
                raise TwostepError(f"{model.__name__} needs __connection__ for a BatchSync")
        self.name = name
        self.source = source
        self.target = target
        self.changed_at = changed_at
        self.key = tuple(key)
        self.transform = transform or (lambda row: row.to_dict())
        self.conflict_keys = conflict_keys
        self.batch_size = batch_size

    @property
    def _target_connection(self) -> str:
        return str(self.target.__connection__)

    def position(self) -> Position | None:
        """The watermark as committed in the target database; None before the first batch."""
        log = SyncLog.using(self._target_connection).where(name=self.name).first()
        return None if log is None else Position.from_json(log.position)

    def run(self) -> int:
        """Copy batches until one comes back short (caught up); returns the rows copied."""
        total = 0
        while True:
            copied, full = self._batch()
            total += copied
            if not full:
                return total

    def run_batch(self) -> int:
        """Copy one batch; returns how many source rows it covered (0: caught up, or another
        run of this sync committed a batch meanwhile)."""
        return self._batch()[0]

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        """Upsert a batch's target rows (inside the batch's transaction on the target)."""
        if rows:
            self.target.bulk_insert_or_update(rows, conflict_keys=self.conflict_keys)

    def _batch(self) -> tuple[int, bool]:
        """One batch: (source rows covered, whether the batch was full)."""
        start = self.position()
        rows = self._changed_since(start)
        if not rows:
            return 0, False
        last = rows[-1]
        end = Position(
            _watermark_value(getattr(last, self.changed_at), f"{self.changed_at} of {last!r}"),
            tuple(_watermark_value(getattr(last, k), f"{k} of {last!r}") for k in self.key),
        )
        target_rows = [r for r in map(self.transform, rows) if r is not None]
        with Transaction(self._target_connection):
            log = SyncLog.using(self._target_connection).where(name=self.name).for_update()
            current = log.first()
            if (None if current is None else Position.from_json(current.position)) != start:
                # Another run of this sync moved the watermark since it was read: this batch
                # may be older than what it committed, so leave it and read again.
                return 0, True
            self.write(target_rows)
            done = len(rows) + (0 if current is None else int(current.rows_synced or 0))
            SyncLog.using(self._target_connection).insert_or_update(
                {"name": self.name, "position": end.to_json(), "rows_synced": done}
            )
        return len(rows), len(rows) == self.batch_size

    def _changed_since(self, start: Position | None) -> list[ActiveRecord]:
        connection = get_connection(str(self.source.__connection__))
        quote = connection.dialect.quote
        order = (self.changed_at, *self.key)
        columns = [quote(_column(self.source, f)) for f in order]
        if start is None:
            query = self.source.where(f"{columns[0]} IS NOT NULL")
        else:
            # A row comparison: (changed_at, key...) > (?, ?...), on every dialect.
            marks = ", ".join("?" * len(columns))
            query = self.source.where(
                f"({', '.join(columns)}) > ({marks})", start.changed_at, *start.key
            )
        return query.order_by(*order).limit(self.batch_size).all()
