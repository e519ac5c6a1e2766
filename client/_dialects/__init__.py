"""What differs between PostgreSQL, MySQL/MariaDB and SQLite, each in one class.

A dialect knows how to open a driver session (always in driver-level autocommit, no transaction
open: whoever needs a transaction begins it explicitly), whether a session is idle, how `?`
placeholders become the driver's, how identifiers are quoted, what a table looks like, and the
few statements a model needs that are spelled differently per database (insert returning its
key, upsert).

`Dialect.run()` is the one function that sends SQL: `?` placeholders, parameters always bound
by the driver, driver errors translated at `translate_driver_errors`.

Modules: `base` (the `Dialect` base class and the shapes it takes and returns), `lexers` (how
`?` placeholders are found and translated; the rules for `?` and `%` are there), one module
per family (`postgresql`, `mysql`, `sqlite`), `identifiers` (the table and column name rule).
The rest of the client imports from this package, not from its modules.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import ConnectionSettings, Dialect, StatementResult, TableInfo
from .identifiers import validate_identifier, validate_table_name
from .mysql import MySQL
from .postgresql import PostgreSQL
from .sqlite import SQLite

__all__ = [
    "DIALECTS",
    "DRIVER_NAMES",
    "ConnectionSettings",
    "Dialect",
    "StatementResult",
    "TableInfo",
    "dialect_for_driver",
    "validate_identifier",
    "validate_table_name",
]

#: The dialects by name (`Connection.dialect.name`).
DIALECTS: Mapping[str, Dialect] = {
    "postgresql": PostgreSQL(),
    "mysql": MySQL(),
    "sqlite": SQLite(),
}
_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}
#: Every accepted `driver` value of a connection config, aliases included.
DRIVER_NAMES = tuple(sorted([*DIALECTS, *_ALIASES]))


def dialect_for_driver(driver: str) -> Dialect | None:
    """The dialect of a config's `driver` value (aliases accepted); None if unknown."""
    return DIALECTS.get(_ALIASES.get(driver, driver))
