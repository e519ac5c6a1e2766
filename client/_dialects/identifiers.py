"""The one rule for a table or column name that code hands to the model layer: an identifier
every dialect takes once quoted (`Dialect.quote`), checked before any SQL is built."""

from __future__ import annotations

import re

from .._errors import InvalidIdentifier

__all__ = ["validate_identifier", "validate_table_name"]

_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_identifier(value: object, kind: str = "identifier") -> str:
    """A table or column name from code: letters, digits, '_', at most 63 (PostgreSQL's limit)."""
    if not isinstance(value, str) or not _IDENTIFIER_RE.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidIdentifier(
            f"invalid {kind} {shown}: 1-63 of A-Z, a-z, 0-9 and '_', not starting with a digit"
        )
    return value


def validate_table_name(value: object) -> str:
    """`table` or `schema.table` (on MySQL the schema is a database), each part an identifier."""
    if not isinstance(value, str):
        return validate_identifier(value, "table name")
    for part in value.split(".", 1):
        validate_identifier(part, "table name")
    return value
