"""SQLite's side of the type contract: a column classified from its declared type name, the
only type SQLite keeps (no driver hooks: sqlite3's registries are process-global)."""

from __future__ import annotations

import re

from .kinds import ColumnType, Kind, with_limits

__all__ = ["sqlite_column"]


def sqlite_column(declared: str) -> ColumnType:
    """From the declared type (PRAGMA table_info): these names first, then SQLite's affinity
    rules (https://sqlite.org/datatype3.html#determination_of_column_affinity)."""
    base = " ".join(re.sub(r"\(.*?\)", " ", declared.upper()).split())  # TIMESTAMP(3) WITH ...
    named = {
        "BOOLEAN": Kind.BOOL,
        "BOOL": Kind.BOOL,
        "DECIMAL": Kind.DECIMAL,
        "NUMERIC": Kind.DECIMAL,
        "DATE": Kind.DATE,
        "TIME": Kind.TIME,
        "DATETIME": Kind.DATETIME,
        "TIMESTAMP": Kind.DATETIME,
        "TIMESTAMPTZ": Kind.INSTANT,
        "TIMESTAMP WITH TIME ZONE": Kind.INSTANT,
        "UUID": Kind.UUID,
        "JSON": Kind.JSON,
        "JSONB": Kind.JSON,
    }
    kind = named.get(base)
    if kind is None:
        if "INT" in base:
            kind = Kind.INT
        elif any(word in base for word in ("CHAR", "CLOB", "TEXT")):
            kind = Kind.TEXT
        elif "BLOB" in base:
            kind = Kind.BYTES
        elif any(word in base for word in ("REAL", "FLOA", "DOUB")):
            kind = Kind.FLOAT
        else:
            kind = Kind.OTHER  # no type, or NUMERIC affinity under another name
    return with_limits(kind, declared or "(none)", single=False, fraction=6)
