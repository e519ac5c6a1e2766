"""Which decision log store a coordinator opens, from its settings (`log_store`).

`sqlite`: the embedded log in the data directory, one coordinator (`_datadir` locks it).
`postgresql`: a database several replicas share (`log.PostgresDecisionLog`), its password from
`log_database_password` or the file `log_database_password_file` (neither: libpq's own ways,
PGPASSWORD or ~/.pgpass); replicas of one store share the cluster claim (`_claim`).
"""

from __future__ import annotations

from collections.abc import Callable

from ._config import ConfigError, Settings
from .log import DecisionLog, PostgresDecisionLog, SqliteDecisionLog

__all__ = ["claim_shared_by", "open_decision_log"]


def open_decision_log(settings: Settings, clock: Callable[[], int]) -> DecisionLog:
    """The store `settings` name. Raises `ConfigError` (an unreadable password file),
    `LogUnavailable` (the database cannot be reached or belongs to another cluster id),
    `OSError` / `sqlite3.Error` (the embedded log's file)."""
    if settings.log_store == "postgresql":
        return PostgresDecisionLog(
            settings.log_database_url,
            password=_password(settings),
            cluster_id=settings.cluster_id,
            max_batch=settings.max_batch,
            clock=clock,
        )
    return SqliteDecisionLog(settings.data_dir, max_batch=settings.max_batch, clock=clock)


def claim_shared_by(decision_log: DecisionLog) -> str:
    """Whom the cluster claim is shared with: the coordinators of the same PostgreSQL store
    (named by the store's id); "" for the embedded store (nobody: one coordinator)."""
    if isinstance(decision_log, PostgresDecisionLog):
        return f"log.{decision_log.store_id}"
    return ""


def _password(settings: Settings) -> str:
    path = settings.log_database_password_file
    if path is None:
        return settings.log_database_password
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read log_database_password_file {path}: {why}") from None
