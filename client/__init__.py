"""twostep's client library: named connections, ActiveRecord models, and atomic commits
across PostgreSQL and MySQL/MariaDB with `global_transaction()`."""

from ._connections import Connection, ConnectionManager, get_connection
from ._errors import (
    ConfigurationError,
    CoordinatorUnavailable,
    DatabaseError,
    HeuristicOutcome,
    InvalidIdentifier,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    StatementRefused,
    TransactionAborted,
    TransactionEnded,
    TransactionError,
    TwoPhaseNotSupported,
    TwostepError,
)
from ._global import GlobalTransaction, global_transaction
from ._model import ActiveRecord, Query
from ._transaction import Transaction

__all__ = [
    "ActiveRecord",
    "ConfigurationError",
    "Connection",
    "ConnectionManager",
    "CoordinatorUnavailable",
    "DatabaseError",
    "GlobalTransaction",
    "HeuristicOutcome",
    "InvalidIdentifier",
    "OutcomeUnknown",
    "PhaseTwoIncomplete",
    "Query",
    "StatementRefused",
    "Transaction",
    "TransactionAborted",
    "TransactionEnded",
    "TransactionError",
    "TwoPhaseNotSupported",
    "TwostepError",
    "get_connection",
    "global_transaction",
]
