"""ActiveRecord: a class per table, an instance per row, queries as lazy immutable builders.

    class Order(ActiveRecord):
        __connection__ = "orders"       # a configured connection's name
        # __tablename__ = "orders"      # default: Rails' rule (table_name_for), Person -> people

    order = Order.create(total=30)      # INSERT; a generated key is read back into order.id
    Order.where(status="open").where("total > ?", 10).order_by("-id").limit(10).all()
    with Order.using_connection("archive"):   # this thread / context only
        Order.count()
    Order.using("archive").where(id=1).first()  # one query

Columns and primary key are read from the table on first use (once per connection and table),
so every table and column name a model sends is one the table has, quoted for its dialect;
values are always bound parameters. Every statement goes through `Connection.run()`, so inside
`global_transaction()` a model reads and writes on its connection's branch, and inside
`Transaction(conn)` on that transaction.

Choices a user may trip on:
- A known column that was never set or not selected reads as None.
- `where(col=[...])` (list, tuple or set) means `col IN (...)`, except that on a JSON or
  PostgreSQL array column a list is one value; `where(col=None)` means `IS NULL`.
- `save()` on a loaded row UPDATEs only the columns assigned since it was loaded or saved.
- Hooks (`before_save`, `after_save`, `before_destroy`, `after_destroy`) run around the
  statement inside the active transaction, not after its commit; outside any, a model with
  hooks writes in a local `Transaction` of its own, so a hook that raises rolls the write
  back (and a hook that writes to another connection there needs `global_transaction()`).
  Upserts, `Query.update()` and `Query.delete()` run no hooks.
- Values follow one type contract on every dialect (`_types`, README "Types"): a value its
  column would store changed is refused with `UnsupportedValue` before anything is sent.
- Concurrent read-change-save loses updates unless the row is locked (`for_update()`),
  the change is computed by the database (`Query.update(n=F("n") + 1)`), or the table has a
  `lock_version` column: then `save()` and `delete()` check it and raise `StaleObjectError`.
- A column named like a model method (`count`, `save`, ...) is set through the constructor and
  read through `to_dict()`: attribute access finds the method. Or give it another field name:
  `counted = Column("count")`.
- A `Column("db_name")` field (legacy schemas) is that column's only name in the model API;
  SQL text (`where("db_name = ?")`, `raw_query()`) uses the column's own name.

Modules: `record` (`ActiveRecord`: models, their instances, save and delete, lock_version,
hooks), `query` (`Query`: building, running and rendering queries), `columns` (the column,
key and value rules both apply to a model's table). `record` imports `query`, never the
reverse. The rest of the client imports from this package.
"""

from __future__ import annotations

from .columns import Column
from .query import Query
from .record import ActiveRecord, table_name_for

__all__ = ["ActiveRecord", "Column", "Query", "table_name_for"]
