"""The rules a query and a record both apply to a model's table, as its connection described
it (`TableInfo`): which field names a model has and the column each names, how a value is
bound (the type contract), which columns are the keys, and which is the lock_version column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._dialects import Dialect, TableInfo, validate_identifier
from .._errors import ConfigurationError, UnknownColumn, UnsupportedValue
from .._expressions import Expression
from .._types import to_db

__all__ = [
    "Column",
    "attribute_of",
    "bind_value",
    "check_aliases",
    "check_column",
    "key_to_read_back",
    "lock_column",
    "quote_column",
    "require_key",
    "to_columns",
    "unknown_column",
    "upsert_keys",
    "without_empty_key",
]


class Column:
    """A field whose column has another name in the table (a legacy schema):

        class LegacyUser(ActiveRecord):
            email = Column("email_address")

    `email` is then that column's only name in the model's API: the constructor, attributes,
    `to_dict()`, `where()`, `order_by()`, `select()`, `update()` and `F()`, upserts and their
    `conflict_keys`; SQL text (`where("email_address = ?", ...)`, `raw_query()`) names the
    column itself. Type and keys come from the table as for any column. A column the table
    lacks, or a field that would hide another of its columns, raises `ConfigurationError`
    at the model's first use; a field named like an ActiveRecord method, when defined."""

    def __init__(self, name: str):
        self.name = validate_identifier(name, "column name")

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._values.get(self.name)

    def __repr__(self) -> str:
        return f"Column({self.name!r})"


def check_aliases(model: type, table: TableInfo) -> None:
    """Every `Column` of `model` names a column of its table and hides none."""
    for attribute, column in model._aliases.items():
        if column not in table.columns:
            raise ConfigurationError(
                f"{model.__name__}.{attribute} = Column({column!r}): table {table.name!r} "
                f"has no column {column!r} (it has: {', '.join(table.columns)})"
            )
        if attribute in table.columns and attribute not in model._aliased:
            raise ConfigurationError(
                f"{model.__name__}.{attribute} = Column({column!r}) hides column "
                f"{attribute!r} of table {table.name!r}: name the field otherwise, or map "
                f"{attribute!r} to a field too"
            )


def attribute_of(model: type, column: str) -> str:
    """The field name of a column of `model`'s table."""
    return model._aliased.get(column, column)


def quote_column(dialect: Dialect, table: TableInfo, model: type, name: str) -> str:
    return dialect.quote(check_column(model, table, name))


def bind_value(model: type, table: TableInfo, dialect: Dialect, column: str, value: Any) -> Any:
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


def unknown_column(model: type, table: TableInfo, name: str) -> UnknownColumn:
    fields = (
        c if c not in model._aliased else f"{model._aliased[c]} (column {c})" for c in table.columns
    )
    return UnknownColumn(
        f"{model.__name__} has no column {name!r} (table {table.name!r} has: {', '.join(fields)})"
    )


def check_column(model: type, table: TableInfo, name: str) -> str:
    """The column a field name of `model` stores in (its `Column` alias, else itself)."""
    column = model._aliases.get(name)
    if column is None and name not in model._aliased:  # else: a column known by its field
        column = name
    if column not in table.columns:
        raise unknown_column(model, table, name)
    return column


def to_columns(model: type, table: TableInfo, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A row given by field name (keyword arguments, or a dict), as column -> value; a key
    that is not a field raises `UnknownColumn`, one that is not a string TypeError."""
    for name in fields:
        if not isinstance(name, str):
            raise TypeError(f"{model.__name__}: field names are strings, not {name!r}")
    return {check_column(model, table, name): value for name, value in fields.items()}


def require_key(model: type, table: TableInfo, action: str) -> tuple[str, ...]:
    if not table.primary_key:
        raise ConfigurationError(
            f"{action} on {model.__name__} needs a primary key, and table {table.name!r} has none"
        )
    return table.primary_key


def upsert_keys(model: type, table: TableInfo, keys: Sequence[str] | None) -> list[str]:
    """The columns an upsert conflicts on: exactly the primary key or a unique key. MySQL
    would otherwise insert a duplicate row where PostgreSQL and SQLite raise."""
    if keys is None:
        return list(require_key(model, table, "an upsert without conflict_keys"))
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError("conflict_keys must name at least one column")
    checked = [check_column(model, table, key) for key in keys]
    if not any(set(unique) == set(checked) for unique in table.unique_keys):
        listed = "; ".join(", ".join(unique) for unique in table.unique_keys) or "none"
        raise ConfigurationError(
            f"{model.__name__} cannot upsert on ({', '.join(checked)}): table {table.name!r} "
            f"has no primary key or unique key of exactly those columns (unique keys: "
            f"{listed}), so a conflict could never be detected"
        )
    return checked


def lock_column(name: str | None, table: TableInfo) -> str | None:
    """The optimistic-locking column, if the model's table has it (`name`: the model's
    `__lock_column__`)."""
    return name if name is not None and name in table.columns else None


def without_empty_key(table: TableInfo, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A primary key column given as None is left out, so that the database generates it."""
    return {c: v for c, v in fields.items() if not (v is None and c in table.primary_key)}


def key_to_read_back(dialect: Dialect, table: TableInfo, missing: list[str]) -> list[str]:
    """Which missing key columns an INSERT can report: any (RETURNING), or a single
    auto-generated key through `lastrowid` (MySQL; SQLite before 3.35)."""
    if not missing or dialect.supports_returning:
        return missing
    if table.auto_key and missing == list(table.primary_key):
        return missing
    return []
