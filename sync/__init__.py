"""twostep.sync: keeping another database in sync with the one the application writes.

Each strategy is a small helper on twostep.client's public API (README "Keeping another
database in sync" says what each guarantees and what it does not):

- `BatchSync` (with `SyncLog`, `Position`): copy the rows changed since a (timestamp, key)
  high-water mark, a batch at a time, with idempotent upserts; resumable after a crash.
- `Mirrored`: real-time sync through hooks: a model's `save()` and `delete()` write its copy
  in another database inside the same `global_transaction()`.
"""

from ._batch import BatchSync, Position, SyncLog
from ._mirror import Mirrored

__all__ = ["BatchSync", "Mirrored", "Position", "SyncLog"]
