"""The decision log: where the coordinator's one decision per gtrid is kept, durably.

`interface` holds the records, the `DecisionLog` protocol and the rules every store applies;
`writer` the group commit (one writer thread, a bounded queue) both stores use; `sqlite` the
embedded store (one SQLite file), with its statements in `sqlite_statements`; `postgresql` the
store replicas share (one PostgreSQL database), with its statements in `postgresql_statements`.
Everything else in the coordinator imports from here.
"""

from .interface import (
    ABORTED_BY_CLIENT,
    DEADLINE_PASSED,
    ONE_PHASE_COMMIT,
    RESOLVED_BY_OPERATOR,
    UNKNOWN_TRANSACTION,
    Ack,
    Begun,
    BranchRecord,
    Decision,
    DecisionLog,
    ListQuery,
    LogBusy,
    LogUnavailable,
    Note,
    Proposal,
    Resolution,
    Resolved,
    State,
    TransactionRecord,
)
from .postgresql import PostgresDecisionLog
from .sqlite import LOG_FILE_NAME, SqliteDecisionLog
from .writer import DECIDE_WAIT_S, WriterStats

__all__ = [
    "ABORTED_BY_CLIENT",
    "DEADLINE_PASSED",
    "DECIDE_WAIT_S",
    "LOG_FILE_NAME",
    "ONE_PHASE_COMMIT",
    "RESOLVED_BY_OPERATOR",
    "UNKNOWN_TRANSACTION",
    "Ack",
    "Begun",
    "BranchRecord",
    "Decision",
    "DecisionLog",
    "ListQuery",
    "LogBusy",
    "LogUnavailable",
    "Note",
    "PostgresDecisionLog",
    "Proposal",
    "Resolution",
    "Resolved",
    "SqliteDecisionLog",
    "State",
    "TransactionRecord",
    "WriterStats",
]
