"""twostep's client library: named connections, ActiveRecord models, and atomic commits
across PostgreSQL and MySQL/MariaDB with `global_transaction()`."""

from ._channel import ChannelConfig
from ._connections import Connection, ConnectionManager, get_connection
from ._errors import (
    ConfigurationError,
    CoordinatorUnavailable,
    DatabaseError,
    HeuristicOutcome,
    InvalidIdentifier,
    LockNotAvailable,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    PoolTimeout,
    StaleObjectError,
    StatementRefused,
    TransactionAborted,
    TransactionEnded,
    TransactionError,
    TwoPhaseNotSupported,
    TwostepError,
    UnknownColumn,
    UnsupportedValue,
)
from ._expressions import F
from ._global import GlobalTransaction, global_transaction
from ._model import ActiveRecord, Column, Query
from ._transaction import Transaction

__all__ = [
    "ActiveRecord",
    "ChannelConfig",
    "Column",
    "ConfigurationError",
    "Connection",
    "ConnectionManager",
    "CoordinatorUnavailable",
    "DatabaseError",
    "F",
    "GlobalTransaction",
    "HeuristicOutcome",
    "InvalidIdentifier",
    "LockNotAvailable",
    "OutcomeUnknown",
    "PhaseTwoIncomplete",
    "PoolTimeout",
    "Query",
    "StaleObjectError",
    "StatementRefused",
    "Transaction",
    "TransactionAborted",
    "TransactionEnded",
    "TransactionError",
    "TwoPhaseNotSupported",
    "TwostepError",
    "UnknownColumn",
    "UnsupportedValue",
    "get_connection",
    "global_transaction",
]
