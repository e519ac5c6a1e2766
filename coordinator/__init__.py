"""The twostep coordinator: decides COMMIT or ABORT for global transactions, durably.

Run it with `twostep-coordinator` (see `--help`); embed it (tests) with `CoordinatorServer`.
The decision log's interface and rules are in `_log`, its embedded SQLite store in
`_sqlite_log`; the participant databases in `_registry`; recovery (finishing decided
transactions, aborting orphans) in `_recovery`, what the log keeps and for how long in
`_retention`; the data directory's lock and cluster id in `_datadir`; the cluster claim on the
resources in `_claim`; the Admin service in `_admin`.
"""

from ._claim import ClaimConflict
from ._config import ConfigError, Settings, load_settings
from ._datadir import DataDirInUse
from ._log import (
    Ack,
    Begun,
    BranchRecord,
    Decision,
    DecisionLog,
    ListQuery,
    LogUnavailable,
    Note,
    Proposal,
    Resolution,
    Resolved,
    State,
    TransactionRecord,
)
from ._recovery import Recovery
from ._registry import ResourceConfig, ResourceRegistry
from ._server import SERVICE_NAME, CoordinatorServer
from ._sqlite_log import LOG_FILE_NAME, SqliteDecisionLog, WriterStats

__all__ = [
    "LOG_FILE_NAME",
    "SERVICE_NAME",
    "Ack",
    "Begun",
    "BranchRecord",
    "ClaimConflict",
    "ConfigError",
    "CoordinatorServer",
    "DataDirInUse",
    "Decision",
    "DecisionLog",
    "ListQuery",
    "LogUnavailable",
    "Note",
    "Proposal",
    "Recovery",
    "Resolution",
    "Resolved",
    "ResourceConfig",
    "ResourceRegistry",
    "Settings",
    "SqliteDecisionLog",
    "State",
    "TransactionRecord",
    "WriterStats",
    "load_settings",
]
