"""The branch layer: two-phase commit on one database branch, shared by client and coordinator.

One implementation of everything a branch is, used by `global_transaction()` and by the
coordinator's recovery alike (docs/design.md §1 and §5):

`twostep.client.tpc.xid`
    The xid codec: gtrids, branch qualifiers, their encodings for PostgreSQL and MySQL, and
    the parsers for what `pg_prepared_xacts` and `XA RECOVER` list. Every id that reaches SQL
    is validated here.
`twostep.client.tpc.operations`
    Each dialect's branch statements: begin, the read-only vote, PREPARE, one-phase commit,
    COMMIT/ROLLBACK PREPARED, recover, and how a gone branch ended.
`twostep.client.tpc.phase2`
    Phase 2 on one prepared branch: idempotent, retried, honest about "unknown xid".
`twostep.client.tpc.failpoints`
    Named steps at which a process kills or stops itself, for fault-injection tests.

The coordinator imports the client only through this package and `twostep.client` (a
contract import-linter checks in the test command).
"""

from .._errors import translate_driver_errors
from .operations import BranchEscaped, BranchOps, Finish, VoteNo, local_ops, require_two_phase
from .phase2 import Ended, PreparedBranch, ended_by_status, finish_prepared, release_session
from .xid import (
    FORMAT_ID,
    LOCAL_CLUSTER,
    GtridInfo,
    Xid,
    new_gtrid,
    owner_tag,
    parse_gtrid,
    validate_bqual,
    validate_cluster_id,
    validate_resource_name,
)

__all__ = [
    "FORMAT_ID",
    "LOCAL_CLUSTER",
    "BranchEscaped",
    "BranchOps",
    "Ended",
    "Finish",
    "GtridInfo",
    "PreparedBranch",
    "VoteNo",
    "Xid",
    "ended_by_status",
    "finish_prepared",
    "local_ops",
    "new_gtrid",
    "owner_tag",
    "parse_gtrid",
    "release_session",
    "require_two_phase",
    "translate_driver_errors",
    "validate_bqual",
    "validate_cluster_id",
    "validate_resource_name",
]
