"""Real-time sync through hooks, made atomic: a model whose every `save()` and `delete()`
writes its row in another database (an analytics copy) inside the same
`global_transaction()` as the row itself, so both commit or neither does.

    class User(Mirrored, ActiveRecord):          # PostgreSQL
        __connection__ = "users"
        __mirror__ = UserAnalytics                # MariaDB
        __mirror_keys__ = ("user_id",)

        def mirror_row(self):
            return {"user_id": self.id, "name": self.name}

    User.create(id=1, name="ann")                 # users and user_analytics, or neither

The seed's `after_save` that upserts the analytics row ran after the user's write on its own
connection: a failure between them left the two databases apart. Here the hooks run inside
the write's transaction (twostep.client runs hooks in the active transaction), and `save()`
and `delete()` open a `global_transaction()` when none is active (a block already open is
joined), so a failing analytics write rolls the user row back too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from twostep.client import ActiveRecord, global_transaction

__all__ = ["Mirrored"]


class Mirrored:
    """Mixin for an ActiveRecord model (list it first: `class User(Mirrored, ActiveRecord)`).

    - `__mirror__`: the model of the copy (on another connection, PostgreSQL or MariaDB);
    - `__mirror_keys__`: the copy's primary or unique key, which `mirror_row()` fills (its
      upsert conflicts on it, and `delete()` deletes by it);
    - `mirror_row()`: the copy of this row, by the mirror's field names (None: none is
      written);
    - `__mirror_coordinator__` (default: `global_transaction()`'s: $TWOSTEP_COORDINATOR or
      127.0.0.1:50051) and `__mirror_timeout__` (seconds, default 30) for the transaction
      `save()` and `delete()` open when none is active.

    Only `save()`, `create()` and `delete()` mirror; upserts and `Query.update()` /
    `Query.delete()` run no hooks, so they do not. Inside a local `Transaction` a save raises
    `TwostepError` (a second database cannot join it) and writes nothing. A model that
    defines `after_save` or `after_destroy` itself calls `super()` in it.
    """

    __mirror__: ClassVar[type[ActiveRecord]]
    __mirror_keys__: ClassVar[Sequence[str]]
    __mirror_coordinator__: ClassVar[str | None] = None
    __mirror_timeout__: ClassVar[float] = 30.0

    def mirror_row(self) -> Mapping[str, Any] | None:
        """The mirror's row for this record; a model overrides it."""
        raise NotImplementedError(f"{type(self).__name__} must define mirror_row()")

    def save(self) -> Self:
        with global_transaction(self.__mirror_coordinator__, self.__mirror_timeout__):
            return super().save()  # type: ignore[misc]

    def delete(self) -> None:
        with global_transaction(self.__mirror_coordinator__, self.__mirror_timeout__):
            super().delete()  # type: ignore[misc]

    def after_save(self) -> None:
        row = self.mirror_row()
        if row is not None:
            self.__mirror__.insert_or_update(row, conflict_keys=self.__mirror_keys__)

    def after_destroy(self) -> None:
        row = self.mirror_row()
        if row is not None:
            self.__mirror__.where(**{k: row[k] for k in self.__mirror_keys__}).delete()
