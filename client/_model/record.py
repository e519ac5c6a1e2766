"""ActiveRecord: the base class of models (a class per table, an instance per row), the
connection a model uses, its rows as instances, and an instance's own writes: `save()` and
`delete()` by primary key, checked against lock_version, followed by the hooks."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import inflection

from .._connections import Connection, current_scope, get_connection
from .._dialects import StatementResult, TableInfo, validate_identifier, validate_table_name
from .._errors import ConfigurationError, StaleObjectError, UnknownColumn, UnsupportedValue
from .._transaction import Transaction
from .._types import loader
from ..tpc.xid import validate_resource_name
from .columns import (
    Column,
    attribute_of,
    bind_value,
    check_aliases,
    key_to_read_back,
    lock_column,
    require_key,
    to_columns,
    without_empty_key,
)
from .query import Query

__all__ = ["ActiveRecord", "table_name_for"]

M = TypeVar("M", bound="ActiveRecord")

# Model class -> connection name, set by `using_connection()`; one mapping per context, so a
# rebinding in one thread or asyncio task is invisible to the others.
_bindings: ContextVar[Mapping[type, str]] = ContextVar(
    "twostep_model_connections", default=MappingProxyType({})
)


def table_name_for(class_name: str) -> str:
    """The table a model class is stored in unless it sets `__tablename__`: Rails' convention
    (`ActiveSupport::Inflector#tableize`, through the `inflection` port): the class name in
    snake_case with its last word pluralized by English rules, irregular and uncountable
    words included. `Order` -> `orders`, `OrderItem` -> `order_items`, `Category` ->
    `categories`, `Person` -> `people`, `UserAnalytics` -> `user_analytics`,
    `AnalyticsUserData` -> `analytics_user_data`, `HTTPRequest` -> `http_requests`."""
    return inflection.tableize(class_name)


_HOOKS = ("before_save", "after_save", "before_destroy", "after_destroy")


# -- the model ---------------------------------------------------------------------------------


class ActiveRecord:
    """Base class of models: set `__connection__`, and `__tablename__` where the table is not
    named by Rails' convention (`table_name_for`: `Person` -> `people`).

    Optimistic locking: when the table has a column named `__lock_column__` ("lock_version"
    unless set; None turns it off), a new row gets 0, every `save()` increments it with
    `UPDATE ... WHERE <key> AND lock_version = <the version in this instance>`, and a row
    someone else saved or deleted since raises `StaleObjectError` (as `delete()` does).
    Assigning the attribute sets the version the next save expects (e.g. from a form)."""

    __connection__: ClassVar[str | None] = None
    __tablename__: ClassVar[str] = ""
    __lock_column__: ClassVar[str | None] = "lock_version"
    _has_hooks: ClassVar[bool] = False  # a hook is overridden: writes take a transaction
    # The `Column` fields: field -> column, and back; other fields are named as their columns.
    _aliases: ClassVar[Mapping[str, str]] = MappingProxyType({})
    _aliased: ClassVar[Mapping[str, str]] = MappingProxyType({})

    _values: dict[str, Any]  # column -> value, in the order they were set or loaded
    _columns: frozenset[str]  # columns that read as fields (the table's, and a raw query's)
    _changed: set[str]  # columns assigned since loaded or saved
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
        cls._has_hooks = any(
            getattr(cls, hook) is not getattr(ActiveRecord, hook) for hook in _HOOKS
        )
        cls._collect_aliases()

    @classmethod
    def _collect_aliases(cls) -> None:
        aliases: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a subclass may redefine or drop a parent's
            for attribute, value in vars(klass).items():
                if isinstance(value, Column):
                    aliases[attribute] = value.name
                else:
                    aliases.pop(attribute, None)
        for attribute in aliases:
            if attribute.startswith("_") or hasattr(ActiveRecord, attribute):
                raise ConfigurationError(
                    f"{cls.__name__}.{attribute} = Column(...): a field may not start with '_' "
                    "or take the name of an ActiveRecord method or attribute"
                )
        aliased = {column: attribute for attribute, column in aliases.items()}
        if len(aliased) < len(aliases):
            raise ConfigurationError(f"{cls.__name__} maps one column to two fields: {aliases}")
        cls._aliases = MappingProxyType(aliases)
        cls._aliased = MappingProxyType(aliased)

    def __init__(self, **fields: Any):
        connection = type(self)._connection()
        table = type(self)._table(connection)
        self._start(table, to_columns(type(self), table, fields), persisted=False, connection=None)
        self._changed = set(self._values)

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
        table = connection.table(cls.__tablename__)
        check_aliases(cls, table)
        return table

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
        cls: type[M],
        row: Mapping[str, Any] | None = None,
        /,
        *,
        conflict_keys: Sequence[str] | None = None,
        **fields: Any,
    ) -> M:
        """`Query.insert_or_update`: the row as a dict or as keyword fields."""
        return Query(cls).insert_or_update(row, conflict_keys=conflict_keys, **fields)

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
        """A new instance of `fields` (by column name, checked by the caller)."""
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

    @classmethod
    def _row_fields(cls, row: Mapping[str, Any] | ActiveRecord) -> dict[str, Any]:
        """A row given to `bulk_insert_or_update`, by field name."""
        return row.to_dict() if isinstance(row, ActiveRecord) else dict(row)

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
        self._values = dict(fields)
        self._columns = known
        self._changed = set()
        self._persisted = persisted
        self._connection_name = connection
        self._key = tuple(self._values.get(c) for c in table.primary_key)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a column, or an honest AttributeError.
        # (A `Column` field is read by the descriptor; its column's own name is no field.)
        if name.startswith("_"):
            raise AttributeError(name)
        if name in type(self)._aliased:
            raise self._no_column(name)
        values = self._values
        if name in values:
            return values[name]
        if name in self._columns:
            return None
        raise self._no_column(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        model = type(self)
        column = model._aliases.get(name)
        if column is None and name in self._columns and name not in model._aliased:
            column = name
        if column is not None:
            self._values[column] = value
            self._changed.add(column)
        elif hasattr(model, name):  # a property or attribute the model class defines
            object.__setattr__(self, name, value)
        else:
            raise self._no_column(name)

    def _no_column(self, name: str) -> UnknownColumn:
        fields = ", ".join(sorted(attribute_of(type(self), c) for c in self._columns))
        return UnknownColumn(f"{type(self).__name__} has no column {name!r} (columns: {fields})")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"

    def to_dict(self) -> dict[str, Any]:
        """The values this instance holds (set, loaded or read back), by field name (a
        `Column` field by its own name, not its column's)."""
        aliased = type(self)._aliased
        return {aliased.get(column, column): value for column, value in self._values.items()}

    def _bound_connection(self) -> Connection:
        if self._connection_name is not None:
            return get_connection(self._connection_name)
        return type(self)._connection()

    def save(self: M) -> M:
        """INSERT a new row (reading a generated key back), or UPDATE the assigned columns of a
        loaded one by its primary key; `before_save()` first and `after_save()` last, all in
        one transaction (`_hooked_write`): an exception in a hook rolls the row back."""
        connection = self._bound_connection()
        table = type(self)._table(connection)
        with self._hooked_write(connection):
            self.before_save()
            if self._persisted:
                self._update(connection, table)
            else:
                self._insert(connection, table)
            self.after_save()
        return self

    @contextlib.contextmanager
    def _hooked_write(self, connection: Connection) -> Iterator[None]:
        """The transaction a write and its hooks share: the active one (`Transaction`,
        `global_transaction()`), else, for a model with hooks, a local `Transaction` on
        `connection`. When that one rolls back, this instance is put back as it was before,
        so that saving it again writes the row again."""
        # A model without hooks writes one statement: it needs no transaction of its own, and
        # is spared the round trips of one.
        if not type(self)._has_hooks or current_scope() is not None:
            yield
            return
        state = {name: copy.copy(value) for name, value in vars(self).items()}
        try:
            with Transaction(connection):
                yield
        except BaseException:
            vars(self).update(state)
            raise

    def _insert(self, connection: Connection, table: TableInfo) -> None:
        model = type(self)
        dialect = connection.dialect
        lock = lock_column(model.__lock_column__, table)
        if lock is not None and self._values.get(lock) is None:
            self._values[lock] = 0
        fields = without_empty_key(
            table, {c: v for c, v in self._values.items() if c in table.columns}
        )
        params = [bind_value(model, table, dialect, c, v) for c, v in fields.items()]
        missing = [c for c in table.primary_key if c not in fields]
        read_back = key_to_read_back(dialect, table, missing)
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
        key = require_key(model, table, action)
        if any(v is None for v in self._key):
            raise ValueError(
                f"{action} needs the primary key of this {model.__name__}, "
                f"which it was loaded without ({', '.join(key)})"
            )
        dialect = connection.dialect
        parts = [f"{dialect.quote(c)} = ?" for c in key]
        params = [
            bind_value(model, table, dialect, c, v) for c, v in zip(key, self._key, strict=True)
        ]
        lock = lock_column(model.__lock_column__, table)
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
        params.append(bind_value(model, table, dialect, lock, version))
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
        lock = lock_column(model.__lock_column__, table)
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
            [bind_value(model, table, dialect, c, v) for c, v in values.items()] + params,
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
        changed since raises `StaleObjectError`); `before_destroy()` first and
        `after_destroy()` last, in one transaction as for `save()`. Saving it again inserts
        it anew."""
        if not self._persisted:
            raise ValueError(f"this {type(self).__name__} was never saved, so it cannot be deleted")
        connection = self._bound_connection()
        table = type(self)._table(connection)
        with self._hooked_write(connection):
            self.before_destroy()
            where, params, version = self._where_row(connection, table, "delete()")
            result = connection.run(
                f"DELETE FROM {connection.dialect.quote_table(table.name)} WHERE {where}",
                params,
                origin=type(self).__name__,
            )
            lock = lock_column(type(self).__lock_column__, table)
            if lock is not None and version is not None and result.rowcount == 0:
                raise self._stale(table, "delete()", lock, version)
            self._persisted = False
            self._changed = set(self._values)
            self.after_destroy()

    # -- hooks ---------------------------------------------------------------------------------
    # Instance methods a model overrides. Each runs inside the transaction of its write (see
    # `save()`), so an exception it raises rolls the write back; statements it runs on the
    # model's connection belong to that transaction. Upserts and set-based writes run none.

    def before_save(self) -> None:
        """Called by `save()` (and `create()`) before the INSERT or UPDATE; a column it
        assigns is written by that statement."""

    def after_save(self) -> None:
        """Called after the INSERT or UPDATE of every `save()` (and `create()`), before the
        transaction ends: the row is readable on the model's connection."""

    def before_destroy(self) -> None:
        """Called by `delete()` before the DELETE."""

    def after_destroy(self) -> None:
        """Called after the DELETE of `delete()`, before the transaction ends."""
