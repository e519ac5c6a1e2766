"""The twostep coordinator: decides COMMIT or ABORT for global transactions, durably.

Run it with `twostep-coordinator` (see `--help`); embed it (tests) with `CoordinatorServer`.
The decision log (its interface, rules and embedded SQLite store) is the package `log`;
recovery (finishing decided transactions, aborting orphans, what the log keeps and for how
long) the package `recovery`; the participant databases are in `_registry`; the data
directory's lock and cluster id in `_datadir`; the cluster claim on the resources in
`_claim`; the Admin service in `_admin`.
"""

from ._claim import ClaimConflict
from ._config import CONFIG_ENV, ConfigError, SettingDoc, Settings, describe_settings, load_settings
from ._datadir import DataDirInUse
from ._registry import ResourceConfig, ResourceRegistry
from ._server import SERVICE_NAME, CoordinatorServer
from .log import (
    LOG_FILE_NAME,
    Ack,
    Begun,
    BranchRecord,
    Decision,
    DecisionLog,
    ListQuery,
    LogUnavailable,
    Note,
    PostgresDecisionLog,
    Proposal,
    Resolution,
    Resolved,
    SqliteDecisionLog,
    State,
    TransactionRecord,
    WriterStats,
)
from .recovery import Recovery

__all__ = [
    "CONFIG_ENV",
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
    "PostgresDecisionLog",
    "Proposal",
    "Recovery",
    "Resolution",
    "Resolved",
    "ResourceConfig",
    "ResourceRegistry",
    "SettingDoc",
    "Settings",
    "SqliteDecisionLog",
    "State",
    "TransactionRecord",
    "WriterStats",
    "describe_settings",
    "load_settings",
]
