"""ActiveRecord: a class per table, an instance per row, queries as lazy immutable builders.

    class Order(ActiveRecord):
        __connection__ = "orders"       # a configured connection's name
        # __tablename__ = "orders"      # default: snake_case plural of the class name

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
- Hooks (`after_save`, `after_destroy`) run right after the statement, inside whatever
  transaction is active, not after its commit. Upserts, `Query.update()` and
  `Query.delete()` run no hooks.
- Values follow one type contract on every dialect (`_types`, README "Types"): a value its
  column would store changed is refused with `UnsupportedValue` before anything is sent.
- Concurrent read-change-save loses updates unless the row is locked (`for_update()`),
  the change is computed by the database (`Query.update(n=F("n") + 1)`), or the table has a
  `lock_version` column: then `save()` and `delete()` check it and raise `StaleObjectError`.
- A column named like a model method (`count`, `save`, ...) is set through the constructor and
  read through `to_dict()`: attribute access finds the method.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from ._connections import Connection, current_scope, get_connection
from ._dialects import (
    Dialect,
    StatementResult,
    TableInfo,
    validate_identifier,
    validate_table_name,
)
from ._errors import ConfigurationError, StaleObjectError, TwostepError, UnsupportedValue
from ._expressions import Arithmetic, Expression
from ._transaction import Transaction
from ._types import Kind, loader, to_db
from .tpc.xid import validate_resource_name

__all__ = ["ActiveRecord", "Query", "table_name_for"]

M = TypeVar("M", bound="ActiveRecord")

# Model class -> connection name, set by `using_connection()`; one mapping per context, so a
# rebinding in one thread or asyncio task is invisible to the others.
_bindings: ContextVar[Mapping[type, str]] = ContextVar(
    "twostep_model_connections", default=MappingProxyType({})
)

#: Rows per upsert statement at most; also bounded by ~30,000 bound values per statement
#: (PostgreSQL takes 65,535, SQLite 32,766).
_BULK_ROWS = 1000
_BULK_VALUES = 30_000


def table_name_for(class_name: str) -> str:
    """`Order` -> `orders`, `OrderItem` -> `order_items`, `Category` -> `categories`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", class_name).lower()
    if re.search(r"[^aeiou]y$", words):
        return words[:-1] + "ies"
    if re.search(r"(?:s|x|z|ch|sh)$", words):
        return words + "es"
    return words + "s"


# -- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Equals:
    column: str
    value: Any  # a list or tuple means IN, except a list on a JSON or array column


@dataclass(frozen=True)
class _Sql:
    sql: str
    params: tuple[Any, ...]


@dataclass(frozen=True)
class _After:
    """Keyset paging: the primary key is greater than `key` (for `batch`)."""

    key: tuple[Any, ...]


def _quote_column(dialect: Dialect, table: TableInfo, model: type, name: str) -> str:
    return dialect.quote(_checked(model, table, name))


def _bind(model: type, table: TableInfo, dialect: Dialect, column: str, value: Any) -> Any:
    """`value` for `column` as the driver binds it, by the type contract (`_types.to_db`)."""
    if isinstance(value, Expression):
        raise UnsupportedValue(
            f"{model.__name__}.{column}: a column expression ({value!r}) is computed by the "
            f"database in a set-based update: {model.__name__}.where(...).update({column}=...)",
            model=model.__name__,
            column=column,
        )
    ctype = table.type_of(column)
    return to_db(dialect.name, ctype, value, model=model.__name__, column=column)


def _unknown_column(model: type, table: TableInfo, name: str) -> AttributeError:
    return AttributeError(
        f"{model.__name__} has no column {name!r} "
        f"(table {table.name!r} has: {', '.join(table.columns)})"
    )


# -- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query(Generic[M]):
    """A lazy, immutable query on a model: each builder method returns a new query, and
    nothing is sent until `all()`, `first()`, `count()`, `batch()` or iteration."""

    model: type[M]
    connection_name: str | None = None  # None: the model's (or its using_connection binding)
    conditions: tuple[_Equals | _Sql | _After, ...] = ()
    ordering: tuple[tuple[str, bool], ...] = ()  # (column, descending)
    row_limit: int | None = None
    columns: tuple[str, ...] | None = None  # None: every column
    lock: str | None = None  # a `for_update()` mode: "update", "nowait", "skip_locked"

    # -- building ------------------------------------------------------------------------------

    def where(self, *sql_and_params: Any, **equals: Any) -> Query[M]:
        """`where(status="open", note=None)`: equal (IS NULL for None, IN for a list, tuple
        or set); values are checked and converted as for writing (README "Types"). On a JSON
        column a dict or list is one JSON value, compared as JSON; on a PostgreSQL array
        column a list is one array.
        `where("total > ? AND total < ?", 10, 20)`: SQL with bound `?` parameters, passed to
        the driver as given. Conditions are joined with AND."""
        added: list[_Equals | _Sql] = []
        if sql_and_params:
            sql, *params = sql_and_params
            if not isinstance(sql, str):
                raise TypeError("where() takes SQL text first, then its ? parameters")
            added.append(_Sql(sql, tuple(params)))
        for column, value in equals.items():
            if isinstance(value, set | frozenset):
                value = tuple(value)
            added.append(_Equals(column, value))
        return replace(self, conditions=self.conditions + tuple(added))

    def order_by(self, *columns: str) -> Query[M]:
        """`order_by("-created", "id")`: a leading '-' sorts descending. Appends."""
        ordering = []
        for column in columns:
            if not isinstance(column, str) or not column.lstrip("-"):
                raise TypeError(f"order_by() takes column names, not {column!r}")
            ordering.append((column.removeprefix("-"), column.startswith("-")))
        return replace(self, ordering=self.ordering + tuple(ordering))

    def limit(self, n: int) -> Query[M]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"limit() takes a non-negative integer, not {n!r}")
        return replace(self, row_limit=n)

    def select(self, *columns: str) -> Query[M]:
        """Load only these columns (the others read as None on the loaded rows)."""
        if not columns or not all(isinstance(c, str) for c in columns):
            raise TypeError("select() takes one or more column names")
        return replace(self, columns=tuple(columns))

    def using(self, connection: str) -> Query[M]:
        """The same query on another configured connection."""
        return replace(self, connection_name=validate_resource_name(connection))

    def for_update(self, *, nowait: bool = False, skip_locked: bool = False) -> Query[M]:
        """Lock the rows this query returns until the transaction ends (`SELECT ... FOR
        UPDATE`): another transaction that locks or writes them waits until then, so a row
        read, changed and saved cannot lose a concurrent change.

        `nowait=True`: a row another transaction holds raises `LockNotAvailable` at once
        instead of waiting. `skip_locked=True`: such rows are left out (a work queue).
        PostgreSQL and MariaDB 10.6+ / MySQL 8 have both. A wait is bounded by the
        transaction's deadline inside `global_transaction()`.

        Runs only inside `global_transaction()` or `Transaction(conn)`: outside, the lock would
        end with its own statement, so `all()` / `first()` raise `TwostepError`. On SQLite,
        which has no row locks, they raise `TwostepError` saying what to use instead."""
        if nowait and skip_locked:
            raise ValueError("for_update() takes nowait=True or skip_locked=True, not both")
        mode = "nowait" if nowait else "skip_locked" if skip_locked else "update"
        return replace(self, lock=mode)

    # -- reading -------------------------------------------------------------------------------

    def all(self) -> list[M]:
        connection, table = self._resolve()
        if self.lock is not None and current_scope() is None:
            raise TwostepError(
                f"{self.model.__name__}: for_update() outside a transaction would lock nothing "
                "past its own statement; use it inside global_transaction() or Transaction()"
            )
        sql, params = self._select_sql(connection.dialect, table)
        result = connection.run(sql, params, origin=self.model.__name__)
        return self.model._rows(connection, table, result)

    def __iter__(self) -> Iterator[M]:
        return iter(self.all())

    def first(self) -> M | None:
        """The first row (by primary key unless ordered), or None."""
        query = self
        if not query.ordering:
            _, table = self._resolve()
            query = query.order_by(*table.primary_key)
        rows = query.limit(1).all()
        return rows[0] if rows else None

    def count(self) -> int:
        if self.lock is not None:
            raise ValueError(
                "count() cannot lock rows (PostgreSQL refuses FOR UPDATE with aggregates); "
                "lock them with all() or first()"
            )
        connection, table = self._resolve()
        dialect = connection.dialect
        where, params = self._where_sql(dialect, table)
        source = dialect.quote_table(table.name)
        if self.row_limit is None:
            sql = f"SELECT COUNT(*) FROM {source}{where}"
        else:
            sql = f"SELECT COUNT(*) FROM (SELECT 1 AS one FROM {source}{where} LIMIT ?) AS limited"
            params.append(self.row_limit)
        [(n,)] = connection.run(sql, params, origin=self.model.__name__).rows
        return int(n)

    def batch(self, size: int) -> Iterator[list[M]]:
        """The rows in lists of at most `size`, in primary key order, one query per list
        (keyset paging: `WHERE pk > last`, so rows are never skipped or read twice)."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"batch() takes a positive integer, not {size!r}")
        if self.ordering:
            raise ValueError("batch() walks the rows in primary key order; drop order_by()")
        connection, table = self._resolve()
        key = _require_key(self.model, table, "batch()")
        query = replace(self, connection_name=connection.name).order_by(*key)
        if query.columns is not None:
            query = replace(
                query, columns=query.columns + tuple(c for c in key if c not in query.columns)
            )
        remaining = self.row_limit
        page = query
        while remaining is None or remaining > 0:
            step = size if remaining is None else min(size, remaining)
            rows = page.limit(step).all()
            if rows:
                yield rows
            if len(rows) < step:
                return
            if remaining is not None:
                remaining -= len(rows)
            after = _After(tuple(rows[-1]._values[c] for c in key))  # bound when rendered
            page = replace(query, conditions=(*query.conditions, after))

    def raw_query(self, sql: str, params: Sequence[Any] = ()) -> list[M]:
        """Run SQL with `?` placeholders; each row it returns becomes an instance (columns that
        are not the table's are readable attributes too)."""
        connection, table = self._resolve()
        result = connection.run(sql, params, origin=self.model.__name__)
        return self.model._rows(connection, table, result)

    # -- writing -------------------------------------------------------------------------------

    def create(self, **fields: Any) -> M:
        """Build an instance on this query's connection and INSERT it."""
        connection, table = self._resolve()
        record = self.model._new(connection, table, fields)
        record.save()
        return record

    def insert_or_update(self, *, conflict_keys: Sequence[str] | None = None, **fields: Any) -> M:
        """INSERT the row, or UPDATE its other columns where it conflicts on `conflict_keys`
        (default: the primary key). `conflict_keys` must be the primary key or a unique key
        of the table, else `ConfigurationError` (MySQL would insert a duplicate where the
        others raise); MySQL matches any unique key. Returns it as an instance, with a
        generated key read back where the database can say it. Runs no hooks.

        With a lock_version column, a new row gets 0 and an existing one is incremented; the
        instance carries the new version on PostgreSQL and SQLite, and none on MySQL (which
        cannot say whether it inserted or updated): reload it there before `save()`."""
        connection, table = self._resolve()
        dialect = connection.dialect
        model = self.model
        fields = _without_empty_key(table, fields)
        if not fields:
            raise ValueError("insert_or_update() needs at least one column value")
        keys = _conflict_keys(model, table, conflict_keys)
        lock = _lock_column(model, table)
        if lock is not None and fields.get(lock) is None:
            fields[lock] = 0  # a new row's version; an existing row's is incremented
        columns = [_checked(model, table, c) for c in fields]
        params = [_bind(model, table, dialect, c, v) for c, v in fields.items()]
        missing = [c for c in table.primary_key if c not in fields]
        read_back = _key_to_read_back(dialect, table, missing)
        returning = read_back + ([lock] if lock and dialect.supports_returning else [])
        sql = dialect.upsert(table.name, columns, 1, keys, returning, bump=lock)
        result = connection.run(sql, params, origin=model.__name__)
        record = model._new(connection, table, fields)
        record._after_insert(connection, table, result, read_back)
        if lock is not None and not dialect.supports_returning:
            del record._values[lock]  # inserted (0) or incremented: MySQL does not say which
        return record

    def bulk_insert_or_update(
        self,
        rows: Iterable[Mapping[str, Any] | ActiveRecord],
        *,
        conflict_keys: Sequence[str] | None = None,
    ) -> int:
        """`insert_or_update` for many rows (dicts or instances, all with the same columns).

        Returns the affected row count as the database reports it (MySQL counts an updated row
        twice). Large inputs take several statements; outside a transaction they run in one
        local transaction, so the rows are written all or none. Runs no hooks; a lock_version
        column is set to 0 on new rows and incremented on existing ones."""
        connection, table = self._resolve()
        dialect = connection.dialect
        model = self.model
        values = [r.to_dict() if isinstance(r, ActiveRecord) else dict(r) for r in rows]
        if not values:
            return 0
        if not values[0]:
            raise ValueError("bulk_insert_or_update() needs at least one column value")
        for number, row in enumerate(values):
            if row.keys() != values[0].keys():
                raise ValueError(
                    f"every row needs the same columns: row {number} has {sorted(row)}, "
                    f"row 0 has {sorted(values[0])}"
                )
        keys = _conflict_keys(model, table, conflict_keys)
        lock = _lock_column(model, table)
        if lock is not None:
            for row in values:
                if row.get(lock) is None:
                    row[lock] = 0
        columns = [_checked(model, table, c) for c in values[0]]
        # Every value is checked before the first statement is sent.
        bound = [[_bind(model, table, dialect, c, row[c]) for c in columns] for row in values]
        per_statement = max(1, min(_BULK_ROWS, _BULK_VALUES // len(columns)))
        chunks = [bound[i : i + per_statement] for i in range(0, len(bound), per_statement)]

        def write() -> int:
            written = 0
            for chunk in chunks:
                sql = dialect.upsert(table.name, columns, len(chunk), keys, bump=lock)
                params = [value for row in chunk for value in row]
                written += connection.run(sql, params, origin=model.__name__).rowcount
            return written

        if len(chunks) > 1 and current_scope() is None:
            with Transaction(connection):
                return write()
        return write()

    def update(self, **values: Any) -> int:
        """Set columns on every row the conditions match, in one UPDATE, and return how many
        rows matched. A value is bound (checked by the type contract like any write) or a
        column expression computed by the database from the row as it is when the UPDATE
        locks it, so concurrent updates never lose each other's change:

            Account.where(id=1).update(balance=F("balance") - 5)
            Account.where(id=1).where("balance >= ?", 5).update(balance=F("balance") - 5)

        (the second returns 0 when the balance is short). A literal in an expression must fit
        the column it is assigned to, as if assigned alone. A lock_version column is
        incremented in the same statement (unless given), so instances loaded before go
        stale. Runs no hooks and changes no loaded instance. Without conditions it updates
        every row. order_by(), limit(), select() and for_update() are refused here."""
        if not values:
            raise ValueError("update() needs at least one column=value")
        self._refuse_shape("update()")
        connection, table = self._resolve()
        dialect = connection.dialect
        model = self.model

        def column_sql(name: str) -> str:
            return _quote_column(dialect, table, model, name)

        sets: list[str] = []
        params: list[Any] = []
        for column, value in values.items():
            if isinstance(value, Expression):
                kind = table.type_of(_checked(model, table, column)).kind
                if isinstance(value, Arithmetic) and kind not in _NUMERIC:
                    raise UnsupportedValue(
                        f"{model.__name__}.{column} ({table.type_of(column).declared}): "
                        "column arithmetic needs a numeric column",
                        model=model.__name__,
                        column=column,
                    )
                sql, more = value.render(
                    column_sql,
                    lambda operand, column=column: _bind(model, table, dialect, column, operand),
                )
            else:
                sql, more = "?", [_bind(model, table, dialect, column, value)]
            sets.append(f"{column_sql(column)} = {sql}")
            params.extend(more)
        lock = _lock_column(model, table)
        if lock is not None and lock not in values:
            sets.append(f"{dialect.quote(lock)} = COALESCE({dialect.quote(lock)}, 0) + 1")
        where, where_params = self._where_sql(dialect, table)
        result = connection.run(
            f"UPDATE {dialect.quote_table(table.name)} SET {', '.join(sets)}{where}",
            params + where_params,
            origin=model.__name__,
        )
        return result.rowcount

    def delete(self) -> int:
        """DELETE every row the conditions match, in one statement, and return how many.
        Runs no hooks (`after_destroy`) and checks no lock_version. Without conditions it
        deletes every row. order_by(), limit(), select() and for_update() are refused here."""
        self._refuse_shape("delete()")
        connection, table = self._resolve()
        dialect = connection.dialect
        where, params = self._where_sql(dialect, table)
        result = connection.run(
            f"DELETE FROM {dialect.quote_table(table.name)}{where}",
            params,
            origin=self.model.__name__,
        )
        return result.rowcount

    # -- rendering -----------------------------------------------------------------------------

    def _refuse_shape(self, action: str) -> None:
        if self.ordering or self.row_limit is not None or self.columns is not None or self.lock:
            raise ValueError(
                f"{action} changes every row its conditions match: drop order_by(), limit(), "
                "select() and for_update() from the query"
            )

    def _resolve(self) -> tuple[Connection, TableInfo]:
        if self.connection_name is not None:
            connection = get_connection(self.connection_name)
        else:
            connection = self.model._connection()
        return connection, self.model._table(connection)

    def _select_sql(self, dialect: Dialect, table: TableInfo) -> tuple[str, list[Any]]:
        if self.columns is None:
            selected = "*"
        else:
            selected = ", ".join(_quote_column(dialect, table, self.model, c) for c in self.columns)
        where, params = self._where_sql(dialect, table)
        sql = f"SELECT {selected} FROM {dialect.quote_table(table.name)}{where}"
        if self.ordering:
            sql += " ORDER BY " + ", ".join(
                _quote_column(dialect, table, self.model, column) + (" DESC" if desc else "")
                for column, desc in self.ordering
            )
        if self.row_limit is not None:
            sql += " LIMIT ?"
            params.append(self.row_limit)
        if self.lock is not None:
            sql += dialect.lock_clause(self.lock)
        return sql, params

    def _where_sql(self, dialect: Dialect, table: TableInfo) -> tuple[str, list[Any]]:
        model = self.model
        parts: list[str] = []
        params: list[Any] = []
        for condition in self.conditions:
            if isinstance(condition, _Sql):
                parts.append(f"({condition.sql})")
                params.extend(condition.params)
            elif isinstance(condition, _After):
                key = [dialect.quote(c) for c in table.primary_key]
                marks = ", ".join("?" * len(key))
                if len(key) == 1:
                    parts.append(f"{key[0]} > ?")
                else:
                    parts.append(f"({', '.join(key)}) > ({marks})")
                params.extend(
                    _bind(model, table, dialect, c, v)
                    for c, v in zip(table.primary_key, condition.key, strict=True)
                )
            else:
                name = _checked(model, table, condition.column)
                column = dialect.quote(name)
                kind = table.type_of(name).kind
                value = condition.value
                one_value = kind in (Kind.JSON, Kind.ARRAY) and isinstance(value, list | dict)
                if value is None:
                    parts.append(f"{column} IS NULL")
                elif isinstance(value, list | tuple) and not one_value:
                    if kind is Kind.JSON:
                        raise ValueError(
                            f"where({name}=...) on a JSON column compares one dict or list; "
                            "IN is not supported there"
                        )
                    if value:
                        parts.append(f"{column} IN ({', '.join('?' * len(value))})")
                        params.extend(_bind(model, table, dialect, name, v) for v in value)
                    else:
                        parts.append("1 = 0")  # IN () matches nothing
                else:
                    parts.append(
                        dialect.json_equals(column) if kind is Kind.JSON else f"{column} = ?"
                    )
                    params.append(_bind(model, table, dialect, name, value))
        return (" WHERE " + " AND ".join(parts) if parts else ""), params


_NUMERIC = (Kind.INT, Kind.FLOAT, Kind.DECIMAL)


def _checked(model: type, table: TableInfo, name: str) -> str:
    if name not in table.columns:
        raise _unknown_column(model, table, name)
    return name


def _require_key(model: type, table: TableInfo, action: str) -> tuple[str, ...]:
    if not table.primary_key:
        raise ConfigurationError(
            f"{action} on {model.__name__} needs a primary key, and table {table.name!r} has none"
        )
    return table.primary_key


def _conflict_keys(model: type, table: TableInfo, keys: Sequence[str] | None) -> list[str]:
    """The columns an upsert conflicts on: exactly the primary key or a unique key. MySQL
    would otherwise insert a duplicate row where PostgreSQL and SQLite raise."""
    if keys is None:
        return list(_require_key(model, table, "an upsert without conflict_keys"))
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError("conflict_keys must name at least one column")
    checked = [_checked(model, table, key) for key in keys]
    if not any(set(unique) == set(checked) for unique in table.unique_keys):
        listed = "; ".join(", ".join(unique) for unique in table.unique_keys) or "none"
        raise ConfigurationError(
            f"{model.__name__} cannot upsert on ({', '.join(checked)}): table {table.name!r} "
            f"has no primary key or unique key of exactly those columns (unique keys: "
            f"{listed}), so a conflict could never be detected"
        )
    return checked


def _lock_column(model: type[ActiveRecord], table: TableInfo) -> str | None:
    """The optimistic-locking column, if the model's table has it."""
    name = model.__lock_column__
    return name if name is not None and name in table.columns else None


def _without_empty_key(table: TableInfo, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A primary key column given as None is left out, so that the database generates it."""
    return {c: v for c, v in fields.items() if not (v is None and c in table.primary_key)}


def _key_to_read_back(dialect: Dialect, table: TableInfo, missing: list[str]) -> list[str]:
    """Which missing key columns an INSERT can report: any (RETURNING), or a single
    auto-generated key through `lastrowid` (MySQL; SQLite before 3.35)."""
    if not missing or dialect.supports_returning:
        return missing
    if table.auto_key and missing == list(table.primary_key):
        return missing
    return []


# -- the model ---------------------------------------------------------------------------------


class ActiveRecord:
    """Base class of models: set `__connection__` (and optionally `__tablename__`).

    Optimistic locking: when the table has a column named `__lock_column__` ("lock_version"
    unless set; None turns it off), a new row gets 0, every `save()` increments it with
    `UPDATE ... WHERE <key> AND lock_version = <the version in this instance>`, and a row
    someone else saved or deleted since raises `StaleObjectError` (as `delete()` does).
    Assigning the attribute sets the version the next save expects (e.g. from a form)."""

    __connection__: ClassVar[str | None] = None
    __tablename__: ClassVar[str] = ""
    __lock_column__: ClassVar[str | None] = "lock_version"

    _values: dict[str, Any]  # column -> value, in the order they were set or loaded
    _columns: frozenset[str]  # names that read as columns (the table's, and a raw query's)
    _changed: set[str]  # assigned since loaded or saved
    _persisted: bool  # the row exists in the database (loaded or saved)
    _key: tuple[Any, ...]  # the primary key the row had when loaded or saved
    _connection_name: str | None  # where the row lives; None for a new instance

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__tablename__" not in cls.__dict__:
            cls.__tablename__ = table_name_for(cls.__name__)
        validate_table_name(cls.__tablename__)
        if cls.__dict__.get("__connection__") is not None:
            validate_resource_name(cls.__connection__)
        if cls.__lock_column__ is not None:
            validate_identifier(cls.__lock_column__, "lock column")

    def __init__(self, **fields: Any):
        connection = type(self)._connection()
        self._start(type(self)._table(connection), fields, persisted=False, connection=None)
        self._changed = set(fields)

    # -- connection and table ------------------------------------------------------------------

    @classmethod
    def _connection(cls) -> Connection:
        name = None
        bindings = _bindings.get()
        if bindings:
            name = next((bindings[k] for k in cls.__mro__ if k in bindings), None)
        name = name or cls.__connection__
        if not name:
            raise ConfigurationError(
                f"model {cls.__name__} has no connection: set __connection__ = '<name>'"
            )
        return get_connection(name)

    @classmethod
    def _table(cls, connection: Connection) -> TableInfo:
        if cls is ActiveRecord:
            raise TypeError("ActiveRecord is a base class: query a model that subclasses it")
        return connection.table(cls.__tablename__)

    @classmethod
    @contextlib.contextmanager
    def using_connection(cls: type[M], connection: str) -> Iterator[type[M]]:
        """Inside the block (this thread or task only), the model and its subclasses use
        `connection` instead of `__connection__`."""
        get_connection(connection)  # an unknown name fails here, not at the first query
        token = _bindings.set(MappingProxyType({**_bindings.get(), cls: connection}))
        try:
            yield cls
        finally:
            _bindings.reset(token)

    @classmethod
    def using(cls: type[M], connection: str) -> Query[M]:
        """A query on another configured connection: `Order.using("archive").where(id=1)`."""
        return Query(cls).using(connection)

    # -- queries (each returns a new Query, or runs one) ---------------------------------------

    @classmethod
    def query(cls: type[M]) -> Query[M]:
        return Query(cls)

    @classmethod
    def where(cls: type[M], *sql_and_params: Any, **equals: Any) -> Query[M]:
        return Query(cls).where(*sql_and_params, **equals)

    @classmethod
    def order_by(cls: type[M], *columns: str) -> Query[M]:
        return Query(cls).order_by(*columns)

    @classmethod
    def limit(cls: type[M], n: int) -> Query[M]:
        return Query(cls).limit(n)

    @classmethod
    def select(cls: type[M], *columns: str) -> Query[M]:
        return Query(cls).select(*columns)

    @classmethod
    def for_update(cls: type[M], *, nowait: bool = False, skip_locked: bool = False) -> Query[M]:
        return Query(cls).for_update(nowait=nowait, skip_locked=skip_locked)

    @classmethod
    def all(cls: type[M]) -> list[M]:
        return Query(cls).all()

    @classmethod
    def first(cls: type[M]) -> M | None:
        return Query(cls).first()

    @classmethod
    def count(cls) -> int:
        return Query(cls).count()

    @classmethod
    def batch(cls: type[M], size: int) -> Iterator[list[M]]:
        return Query(cls).batch(size)

    @classmethod
    def raw_query(cls: type[M], sql: str, params: Sequence[Any] = ()) -> list[M]:
        return Query(cls).raw_query(sql, params)

    @classmethod
    def create(cls: type[M], **fields: Any) -> M:
        return Query(cls).create(**fields)

    @classmethod
    def insert_or_update(
        cls: type[M], *, conflict_keys: Sequence[str] | None = None, **fields: Any
    ) -> M:
        return Query(cls).insert_or_update(conflict_keys=conflict_keys, **fields)

    @classmethod
    def bulk_insert_or_update(
        cls,
        rows: Iterable[Mapping[str, Any] | ActiveRecord],
        *,
        conflict_keys: Sequence[str] | None = None,
    ) -> int:
        return Query(cls).bulk_insert_or_update(rows, conflict_keys=conflict_keys)

    # -- instances -----------------------------------------------------------------------------

    @classmethod
    def _new(
        cls: type[M], connection: Connection, table: TableInfo, fields: Mapping[str, Any]
    ) -> M:
        record = cls.__new__(cls)
        record._start(table, fields, persisted=False, connection=connection.name)
        record._changed = set(fields)
        return record

    @classmethod
    def _rows(
        cls: type[M], connection: Connection, table: TableInfo, result: StatementResult
    ) -> list[M]:
        if result.columns is None:
            return []
        columns = result.columns
        records = []
        for row in result.rows:
            record = cls.__new__(cls)
            record._start(
                table,
                cls._loaded(connection, table, columns, row),
                persisted=True,
                connection=connection.name,
                extra=columns,
            )
            records.append(record)
        return records

    @classmethod
    def _loaded(
        cls,
        connection: Connection,
        table: TableInfo,
        columns: Sequence[str],
        row: Sequence[Any],
    ) -> dict[str, Any]:
        """A row as the type contract returns it: the table's columns through their loaders
        (`_types.loader`: what the driver cannot know); other columns as the driver gave them."""
        values = dict(zip(columns, row, strict=True))
        for name, value in values.items():
            if value is None or name not in table.types:
                continue
            load = loader(connection.dialect.name, table.types[name])
            if load is None:
                continue
            try:
                values[name] = load(value)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise UnsupportedValue(
                    f"{cls.__name__}.{name} ({table.types[name].declared}): the stored value "
                    f"{value!r} cannot be read as that type: {exc}",
                    model=cls.__name__,
                    column=name,
                ) from exc
        return values

    def _start(
        self,
        table: TableInfo,
        fields: Mapping[str, Any],
        *,
        persisted: bool,
        connection: str | None,
        extra: Sequence[str] = (),
    ) -> None:
        known = frozenset(table.columns).union(extra)
        for name in fields:
            if name not in known:
                raise _unknown_column(type(self), table, name)
        self._values = dict(fields)
        self._columns = known
        self._changed = set()
        self._persisted = persisted
        self._connection_name = connection
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a column, or an honest AttributeError.
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._values
        if name in values:
            return values[name]
        if name in self._columns:
            return None
        raise self._no_column(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name in self._columns:
            self._values[name] = value
            self._changed.add(name)
        elif hasattr(type(self), name):  # a property or attribute the model class defines
            object.__setattr__(self, name, value)
        else:
            raise self._no_column(name)

    def _no_column(self, name: str) -> AttributeError:
        columns = ", ".join(sorted(self._columns))
        return AttributeError(f"{type(self).__name__} has no column {name!r} (columns: {columns})")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({fields})"

    def to_dict(self) -> dict[str, Any]:
        """The values this instance holds (set, loaded or read back), by column name."""
        return dict(self._values)

    def _bound_connection(self) -> Connection:
        if self._connection_name is not None:
            return get_connection(self._connection_name)
        return type(self)._connection()

    def save(self: M) -> M:
        """INSERT a new row (reading a generated key back), or UPDATE the assigned columns of a
        loaded one by its primary key; then `after_save()`."""
        connection = self._bound_connection()
        table = type(self)._table(connection)
        if self._persisted:
            self._update(connection, table)
        else:
            self._insert(connection, table)
        self.after_save()
        return self

    def _insert(self, connection: Connection, table: TableInfo) -> None:
        model = type(self)
        dialect = connection.dialect
        lock = _lock_column(model, table)
        if lock is not None and self._values.get(lock) is None:
            self._values[lock] = 0
        fields = _without_empty_key(
            table, {c: v for c, v in self._values.items() if c in table.columns}
        )
        params = [_bind(model, table, dialect, c, v) for c, v in fields.items()]
        missing = [c for c in table.primary_key if c not in fields]
        read_back = _key_to_read_back(dialect, table, missing)
        sql = dialect.insert(table.name, list(fields), read_back)
        result = connection.run(sql, params, origin=model.__name__)
        self._after_insert(connection, table, result, read_back)

    def _after_insert(
        self,
        connection: Connection,
        table: TableInfo,
        result: StatementResult,
        read_back: Sequence[str],
    ) -> None:
        if result.columns is not None and result.rows:  # RETURNING
            self._values.update(
                type(self)._loaded(connection, table, result.columns, result.rows[0])
            )
        elif read_back and result.lastrowid is not None:
            self._values[read_back[0]] = result.lastrowid
        self._persisted = True
        self._changed = set()
        self._connection_name = connection.name
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def _where_row(
        self, connection: Connection, table: TableInfo, action: str
    ) -> tuple[str, list[Any], int | None]:
        """The condition that finds this row as it was loaded or saved: its primary key and,
        with a lock column, the version this instance holds (returned; None without one)."""
        model = type(self)
        key = _require_key(model, table, action)
        if any(v is None for v in self._key):
            raise ValueError(
                f"{action} needs the primary key of this {model.__name__}, "
                f"which it was loaded without ({', '.join(key)})"
            )
        dialect = connection.dialect
        parts = [f"{dialect.quote(c)} = ?" for c in key]
        params = [_bind(model, table, dialect, c, v) for c, v in zip(key, self._key, strict=True)]
        lock = _lock_column(model, table)
        if lock is None:
            return " AND ".join(parts), params, None
        if lock not in self._values:
            raise ValueError(
                f"{action} needs the {lock} this {model.__name__} was loaded with, and it has "
                "none (not selected, or written by an upsert on MySQL): reload it"
            )
        version = self._values[lock]
        version = 0 if version is None else version  # rows from before the column: NULL
        parts.append(f"COALESCE({dialect.quote(lock)}, 0) = ?")
        params.append(_bind(model, table, dialect, lock, version))
        return " AND ".join(parts), params, version

    def _stale(self, table: TableInfo, action: str, lock: str, version: int) -> StaleObjectError:
        model = type(self).__name__
        key = ", ".join(f"{c}={v!r}" for c, v in zip(table.primary_key, self._key, strict=True))
        return StaleObjectError(
            f"{action} of {model} ({key}) wrote nothing: someone else saved or deleted the row "
            f"since this instance read {lock} {version}; reload it and apply the change again",
            model=model,
            key=self._key,
        )

    def _update(self, connection: Connection, table: TableInfo) -> None:
        model = type(self)
        lock = _lock_column(model, table)
        changed = [
            c for c in self._values if c in self._changed and c in table.columns and c != lock
        ]
        if not changed:
            return
        where, params, version = self._where_row(connection, table, "save()")
        dialect = connection.dialect
        values = {c: self._values[c] for c in changed}
        if lock is not None and version is not None:
            values[lock] = version + 1
        sets = ", ".join(f"{dialect.quote(c)} = ?" for c in values)
        result = connection.run(
            f"UPDATE {dialect.quote_table(table.name)} SET {sets} WHERE {where}",
            [_bind(model, table, dialect, c, v) for c, v in values.items()] + params,
            origin=model.__name__,
        )
        if lock is not None and version is not None:
            if result.rowcount == 0:
                raise self._stale(table, "save()", lock, version)
            self._values[lock] = version + 1
        self._changed = set()
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def delete(self) -> None:
        """DELETE the row by its primary key (and, with a lock column, its version: a row
        changed since raises `StaleObjectError`); then `after_destroy()`. Saving it again
        inserts it anew."""
        if not self._persisted:
            raise ValueError(f"this {type(self).__name__} was never saved, so it cannot be deleted")
        connection = self._bound_connection()
        table = type(self)._table(connection)
        where, params, version = self._where_row(connection, table, "delete()")
        result = connection.run(
            f"DELETE FROM {connection.dialect.quote_table(table.name)} WHERE {where}",
            params,
            origin=type(self).__name__,
        )
        lock = _lock_column(type(self), table)
        if lock is not None and version is not None and result.rowcount == 0:
            raise self._stale(table, "delete()", lock, version)
        self._persisted = False
        self._changed = set(self._values)
        self.after_destroy()

    # -- hooks ---------------------------------------------------------------------------------

    def after_save(self) -> None:
        """Called after every successful `save()` (and `create()`); override it."""

    def after_destroy(self) -> None:
        """Called after a successful `delete()`; override it."""
