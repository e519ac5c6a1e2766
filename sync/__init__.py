"""twostep.sync: keeping another database in sync with the one the application writes.

Each strategy is a small helper on twostep.client's public API (README "Keeping another
database in sync" says what each guarantees and what it does not):

- `BatchSync` (with `SyncLog`, `Position`): copy the rows changed since a (timestamp, key)
  high-water mark, a batch at a time, with idempotent upserts; resumable after a crash.
"""

from ._batch import BatchSync, Position, SyncLog

__all__ = ["BatchSync", "Position", "SyncLog"]
