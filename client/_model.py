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
- `where(col=[...])` (list, tuple or set) means `col IN (...)`; `where(col=None)` `IS NULL`.
- `save()` on a loaded row UPDATEs only the columns assigned since it was loaded or saved.
- Hooks (`after_save`, `after_destroy`) run right after the statement, inside whatever
  transaction is active, not after its commit. Upserts run no hooks.
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

from ._connections import Connection, get_connection
from ._dialects import Dialect, StatementResult, TableInfo, validate_table_name
from ._errors import ConfigurationError
from ._scope import current_scope
from ._transaction import Transaction
from ._xid import validate_resource_name

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
    value: Any  # a tuple means IN


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

    # -- building ------------------------------------------------------------------------------

    def where(self, *sql_and_params: Any, **equals: Any) -> Query[M]:
        """`where(status="open", note=None)`: equal (IS NULL for None, IN for a list);
        `where("total > ? AND total < ?", 10, 20)`: SQL with bound `?` parameters.
        Conditions are joined with AND."""
        added: list[_Equals | _Sql] = []
        if sql_and_params:
            sql, *params = sql_and_params
            if not isinstance(sql, str):
                raise TypeError("where() takes SQL text first, then its ? parameters")
            added.append(_Sql(sql, tuple(params)))
        for column, value in equals.items():
            if isinstance(value, list | tuple | set | frozenset):
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

    # -- reading -------------------------------------------------------------------------------

    def all(self) -> list[M]:
        connection, table = self._resolve()
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
            after = _After(tuple(rows[-1]._values[c] for c in key))
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
        (default: the primary key; MySQL matches any unique key). Returns it as an instance,
        with a generated key read back where the database can say it. Runs no hooks."""
        connection, table = self._resolve()
        dialect = connection.dialect
        fields = _without_empty_key(table, fields)
        columns = [_checked(self.model, table, c) for c in fields]
        if not columns:
            raise ValueError("insert_or_update() needs at least one column value")
        keys = _conflict_keys(self.model, table, conflict_keys)
        missing = [c for c in table.primary_key if c not in fields]
        read_back = _key_to_read_back(dialect, table, missing)
        sql = dialect.upsert(table.name, columns, 1, keys, read_back)
        result = connection.run(sql, list(fields.values()), origin=self.model.__name__)
        record = self.model._new(connection, table, fields)
        record._after_insert(connection, table, result, read_back)
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
        local transaction, so the rows are written all or none. Runs no hooks."""
        connection, table = self._resolve()
        dialect = connection.dialect
        values = [r.to_dict() if isinstance(r, ActiveRecord) else dict(r) for r in rows]
        if not values:
            return 0
        columns = [_checked(self.model, table, c) for c in values[0]]
        if not columns:
            raise ValueError("bulk_insert_or_update() needs at least one column value")
        for number, row in enumerate(values):
            if row.keys() != values[0].keys():
                raise ValueError(
                    f"every row needs the same columns: row {number} has {sorted(row)}, "
                    f"row 0 has {sorted(values[0])}"
                )
        keys = _conflict_keys(self.model, table, conflict_keys)
        per_statement = max(1, min(_BULK_ROWS, _BULK_VALUES // len(columns)))
        chunks = [values[i : i + per_statement] for i in range(0, len(values), per_statement)]

        def write() -> int:
            written = 0
            for chunk in chunks:
                sql = dialect.upsert(table.name, columns, len(chunk), keys)
                params = [row[c] for row in chunk for c in columns]
                written += connection.run(sql, params, origin=self.model.__name__).rowcount
            return written

        if len(chunks) > 1 and current_scope() is None:
            with Transaction(connection):
                return write()
        return write()

    # -- rendering -----------------------------------------------------------------------------

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
        return sql, params

    def _where_sql(self, dialect: Dialect, table: TableInfo) -> tuple[str, list[Any]]:
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
                params.extend(condition.key)
            else:
                column = _quote_column(dialect, table, self.model, condition.column)
                value = condition.value
                if value is None:
                    parts.append(f"{column} IS NULL")
                elif isinstance(value, tuple):
                    if value:
                        parts.append(f"{column} IN ({', '.join('?' * len(value))})")
                        params.extend(value)
                    else:
                        parts.append("1 = 0")  # IN () matches nothing
                else:
                    parts.append(f"{column} = ?")
                    params.append(value)
        return (" WHERE " + " AND ".join(parts) if parts else ""), params


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
    if keys is None:
        return list(_require_key(model, table, "an upsert without conflict_keys"))
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError("conflict_keys must name at least one column")
    return [_checked(model, table, key) for key in keys]


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
    """Base class of models: set `__connection__` (and optionally `__tablename__`)."""

    __connection__: ClassVar[str | None] = None
    __tablename__: ClassVar[str] = ""

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
                dict(zip(columns, row, strict=True)),
                persisted=True,
                connection=connection.name,
                extra=columns,
            )
            records.append(record)
        return records

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
        dialect = connection.dialect
        fields = _without_empty_key(
            table, {c: v for c, v in self._values.items() if c in table.columns}
        )
        missing = [c for c in table.primary_key if c not in fields]
        read_back = _key_to_read_back(dialect, table, missing)
        sql = dialect.insert(table.name, list(fields), read_back)
        result = connection.run(sql, list(fields.values()), origin=type(self).__name__)
        self._after_insert(connection, table, result, read_back)

    def _after_insert(
        self,
        connection: Connection,
        table: TableInfo,
        result: StatementResult,
        read_back: Sequence[str],
    ) -> None:
        if read_back and result.columns is not None and result.rows:
            self._values.update(zip(result.columns, result.rows[0], strict=True))
        elif read_back and result.lastrowid is not None:
            self._values[read_back[0]] = result.lastrowid
        self._persisted = True
        self._changed = set()
        self._connection_name = connection.name
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def _where_key(
        self, connection: Connection, table: TableInfo, action: str
    ) -> tuple[str, list[Any]]:
        key = _require_key(type(self), table, action)
        if any(v is None for v in self._key):
            raise ValueError(
                f"{action} needs the primary key of this {type(self).__name__}, "
                f"which it was loaded without ({', '.join(key)})"
            )
        quote = connection.dialect.quote
        return " AND ".join(f"{quote(c)} = ?" for c in key), list(self._key)

    def _update(self, connection: Connection, table: TableInfo) -> None:
        changed = [c for c in self._values if c in self._changed and c in table.columns]
        if not changed:
            return
        where, key = self._where_key(connection, table, "save()")
        quote = connection.dialect.quote
        sets = ", ".join(f"{quote(c)} = ?" for c in changed)
        connection.run(
            f"UPDATE {connection.dialect.quote_table(table.name)} SET {sets} WHERE {where}",
            [self._values[c] for c in changed] + key,
            origin=type(self).__name__,
        )
        self._changed = set()
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def delete(self) -> None:
        """DELETE the row by its primary key; then `after_destroy()`. Saving it again
        inserts it anew."""
        if not self._persisted:
            raise ValueError(f"this {type(self).__name__} was never saved, so it cannot be deleted")
        connection = self._bound_connection()
        table = type(self)._table(connection)
        where, key = self._where_key(connection, table, "delete()")
        connection.run(
            f"DELETE FROM {connection.dialect.quote_table(table.name)} WHERE {where}",
            key,
            origin=type(self).__name__,
        )
        self._persisted = False
        self._changed = set(self._values)
        self.after_destroy()

    # -- hooks ---------------------------------------------------------------------------------

    def after_save(self) -> None:
        """Called after every successful `save()` (and `create()`); override it."""

    def after_destroy(self) -> None:
        """Called after a successful `delete()`; override it."""
