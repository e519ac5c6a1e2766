"""Query: the lazy, immutable query on a model, what it runs (reads, set-based updates and
deletes, upserts) and the SQL it renders (SELECT with WHERE, ORDER BY, LIMIT and the locking
clause; keyset paging for `batch()`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from .._connections import Connection, current_scope, get_connection
from .._dialects import Dialect, StatementResult, TableInfo
from .._errors import TwostepError, UnsupportedValue
from .._expressions import Arithmetic, Expression
from .._transaction import Transaction
from .._types import Kind
from ..tpc.xid import validate_resource_name
from .columns import (
    attribute_of,
    bind_value,
    check_column,
    key_to_read_back,
    lock_column,
    quote_column,
    require_key,
    to_columns,
    upsert_keys,
    without_empty_key,
)

__all__ = ["Model", "Query"]


class Model(Protocol):
    """What a query needs of its model class and of the model's instances: `ActiveRecord`
    (`record`) is the model there is. A protocol rather than an import, because `record`
    imports this module (its class methods start queries)."""

    __lock_column__: ClassVar[str | None]
    _values: dict[str, Any]

    @classmethod
    def _connection(cls) -> Connection: ...
    @classmethod
    def _table(cls, connection: Connection) -> TableInfo: ...
    @classmethod
    def _new(cls, connection: Connection, table: TableInfo, fields: Mapping[str, Any]) -> Self: ...
    @classmethod
    def _rows(
        cls, connection: Connection, table: TableInfo, result: StatementResult
    ) -> list[Self]: ...
    @classmethod
    def _row_fields(cls, row: Any) -> dict[str, Any]: ...
    def save(self) -> Self: ...
    def _after_insert(
        self,
        connection: Connection,
        table: TableInfo,
        result: StatementResult,
        read_back: Sequence[str],
    ) -> None: ...


M = TypeVar("M", bound=Model)


#: Rows per upsert statement at most; also bounded by ~30,000 bound values per statement
#: (PostgreSQL takes 65,535, SQLite 32,766).
_BULK_ROWS = 1000
_BULK_VALUES = 30_000


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
            query = query.order_by(*(attribute_of(self.model, c) for c in table.primary_key))
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
        key = require_key(self.model, table, "batch()")
        fields = tuple(attribute_of(self.model, c) for c in key)
        query = replace(self, connection_name=connection.name).order_by(*fields)
        if query.columns is not None:
            query = replace(
                query, columns=query.columns + tuple(f for f in fields if f not in query.columns)
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
        record = self.model._new(connection, table, to_columns(self.model, table, fields))
        record.save()
        return record

    def insert_or_update(
        self,
        row: Mapping[str, Any] | None = None,
        /,
        *,
        conflict_keys: Sequence[str] | None = None,
        **fields: Any,
    ) -> M:
        """INSERT the row, or UPDATE its other columns where it conflicts on `conflict_keys`
        (default: the primary key). The row is a dict or keyword fields, not both:
        `insert_or_update({"user_id": 1, "visits": 3}, conflict_keys=["user_id"])` is
        `insert_or_update(user_id=1, visits=3, conflict_keys=["user_id"])`. Neither, both,
        a row that is not a mapping or a key that is not a string raise TypeError; an
        unknown field `UnknownColumn` (a TypeError too).

        `conflict_keys` must be the primary key or a unique key of the table, else
        `ConfigurationError` (MySQL would insert a duplicate where the others raise); MySQL
        matches any unique key. Returns it as an instance, with a generated key read back
        where the database can say it. Runs no hooks.

        With a lock_version column, a new row gets 0 and an existing one is incremented; the
        instance carries the new version on PostgreSQL and SQLite, and none on MySQL (which
        cannot say whether it inserted or updated): reload it there before `save()`."""
        if row is None and not fields:
            raise TypeError(
                "insert_or_update() takes the row as a dict or as keyword fields; it got neither"
            )
        if row is not None and fields:
            raise TypeError(
                "insert_or_update() takes the row as a dict or as keyword fields, not both "
                f"(keywords given: {', '.join(fields)}); put them all in the dict"
            )
        if row is not None and not isinstance(row, Mapping):
            raise TypeError(f"insert_or_update() takes the row as a dict, not {type(row).__name__}")
        connection, table = self._resolve()
        dialect = connection.dialect
        model = self.model
        fields = without_empty_key(table, to_columns(model, table, fields if row is None else row))
        if not fields:
            raise ValueError("insert_or_update() needs at least one column value")
        keys = upsert_keys(model, table, conflict_keys)
        lock = lock_column(model.__lock_column__, table)
        if lock is not None and fields.get(lock) is None:
            fields[lock] = 0  # a new row's version; an existing row's is incremented
        columns = list(fields)
        params = [bind_value(model, table, dialect, c, v) for c, v in fields.items()]
        missing = [c for c in table.primary_key if c not in fields]
        read_back = key_to_read_back(dialect, table, missing)
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
        rows: Iterable[Mapping[str, Any] | Model],
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
        given = [model._row_fields(r) for r in rows]
        if not given:
            return 0
        if not given[0]:
            raise ValueError("bulk_insert_or_update() needs at least one column value")
        for number, row in enumerate(given):
            if row.keys() != given[0].keys():
                raise ValueError(
                    f"every row needs the same columns: row {number} has {sorted(row)}, "
                    f"row 0 has {sorted(given[0])}"
                )
        values = [to_columns(model, table, row) for row in given]
        keys = upsert_keys(model, table, conflict_keys)
        lock = lock_column(model.__lock_column__, table)
        if lock is not None:
            for row in values:
                if row.get(lock) is None:
                    row[lock] = 0
        columns = list(values[0])
        # Every value is checked before the first statement is sent.
        bound = [[bind_value(model, table, dialect, c, row[c]) for c in columns] for row in values]
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
        stale. Runs no hooks (`before_save`, `after_save`) and changes no loaded instance.
        Without conditions it updates every row: `Model.query().update(...)` says so.
        order_by(), limit(), select() and for_update() are refused here. Runs where any
        statement of the model runs (`Connection.run`): on the branch inside
        `global_transaction()`, in `Transaction(conn)`, else on its own (autocommit)."""
        if not values:
            raise ValueError("update() needs at least one column=value")
        self._refuse_shape("update()")
        connection, table = self._resolve()
        dialect = connection.dialect
        model = self.model

        def column_sql(name: str) -> str:
            return quote_column(dialect, table, model, name)

        sets: list[str] = []
        params: list[Any] = []
        values = to_columns(model, table, values)
        for column, value in values.items():
            if isinstance(value, Expression):
                kind = table.type_of(column).kind
                if isinstance(value, Arithmetic) and kind not in _NUMERIC:
                    raise UnsupportedValue(
                        f"{model.__name__}.{column} ({table.type_of(column).declared}): "
                        "column arithmetic needs a numeric column",
                        model=model.__name__,
                        column=column,
                    )
                sql, more = value.render(
                    column_sql,
                    lambda operand, column=column: bind_value(
                        model, table, dialect, column, operand
                    ),
                )
            else:
                sql, more = "?", [bind_value(model, table, dialect, column, value)]
            sets.append(f"{dialect.quote(column)} = {sql}")
            params.extend(more)
        lock = lock_column(model.__lock_column__, table)
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
        """DELETE every row the conditions match, in one statement with bound parameters, and
        return how many (an int). Runs no hooks (`before_destroy`, `after_destroy`) and
        checks no lock_version. Without conditions it deletes every row:
        `Model.query().delete()` says so. order_by(), limit(), select() and for_update()
        are refused here. Runs inside the active transaction, as `update()` does."""
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
            selected = ", ".join(quote_column(dialect, table, self.model, c) for c in self.columns)
        where, params = self._where_sql(dialect, table)
        sql = f"SELECT {selected} FROM {dialect.quote_table(table.name)}{where}"
        if self.ordering:
            sql += " ORDER BY " + ", ".join(
                quote_column(dialect, table, self.model, column) + (" DESC" if desc else "")
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
                    bind_value(model, table, dialect, c, v)
                    for c, v in zip(table.primary_key, condition.key, strict=True)
                )
            else:
                name = check_column(model, table, condition.column)
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
                        params.extend(bind_value(model, table, dialect, name, v) for v in value)
                    else:
                        parts.append("1 = 0")  # IN () matches nothing
                else:
                    parts.append(
                        dialect.json_equals(column) if kind is Kind.JSON else f"{column} = ?"
                    )
                    params.append(bind_value(model, table, dialect, name, value))
        return (" WHERE " + " AND ".join(parts) if parts else ""), params


_NUMERIC = (Kind.INT, Kind.FLOAT, Kind.DECIMAL)
