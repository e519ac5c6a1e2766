from twostep.v1 import coordinator_pb2 as _coordinator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResourceStatus(_message.Message):
    __slots__ = ("name", "dialect", "target", "reachable", "prepared", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    dialect: str
    target: str
    reachable: bool
    prepared: int
    error: str
    def __init__(self, name: _Optional[str] = ..., dialect: _Optional[str] = ..., target: _Optional[str] = ..., reachable: _Optional[bool] = ..., prepared: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("cluster_id", "active", "committed_incomplete", "aborted_incomplete", "in_doubt", "resources", "last_recovery", "recovery_counters", "orphaned", "blocked")
    class RecoveryCountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    ABORTED_INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    IN_DOUBT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LAST_RECOVERY_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_COUNTERS_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    active: int
    committed_incomplete: int
    aborted_incomplete: int
    in_doubt: int
    resources: _containers.RepeatedCompositeFieldContainer[ResourceStatus]
    last_recovery: RecoveryReport
    recovery_counters: _containers.ScalarMap[str, int]
    orphaned: int
    blocked: int
    def __init__(self, cluster_id: _Optional[str] = ..., active: _Optional[int] = ..., committed_incomplete: _Optional[int] = ..., aborted_incomplete: _Optional[int] = ..., in_doubt: _Optional[int] = ..., resources: _Optional[_Iterable[_Union[ResourceStatus, _Mapping]]] = ..., last_recovery: _Optional[_Union[RecoveryReport, _Mapping]] = ..., recovery_counters: _Optional[_Mapping[str, int]] = ..., orphaned: _Optional[int] = ..., blocked: _Optional[int] = ...) -> None: ...

class AdminListRequest(_message.Message):
    __slots__ = ("state", "older_than_s", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: str
    older_than_s: int
    limit: int
    def __init__(self, state: _Optional[str] = ..., older_than_s: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListedTransaction(_message.Message):
    __slots__ = ("transaction", "state", "blocked")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    transaction: _coordinator_pb2.Transaction
    state: str
    blocked: str
    def __init__(self, transaction: _Optional[_Union[_coordinator_pb2.Transaction, _Mapping]] = ..., state: _Optional[str] = ..., blocked: _Optional[str] = ...) -> None: ...

class AdminListResponse(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[ListedTransaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[ListedTransaction, _Mapping]]] = ...) -> None: ...

class ShowTransactionRequest(_message.Message):
    __slots__ = ("gtrid",)
    GTRID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    def __init__(self, gtrid: _Optional[str] = ...) -> None: ...

class BranchState(_message.Message):
    __slots__ = ("branch", "on_database")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    ON_DATABASE_FIELD_NUMBER: _ClassVar[int]
    branch: _coordinator_pb2.Branch
    on_database: str
    def __init__(self, branch: _Optional[_Union[_coordinator_pb2.Branch, _Mapping]] = ..., on_database: _Optional[str] = ...) -> None: ...

class TransactionDetail(_message.Message):
    __slots__ = ("transaction", "branches", "notes", "state", "blocked")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    transaction: _coordinator_pb2.Transaction
    branches: _containers.RepeatedCompositeFieldContainer[BranchState]
    notes: _containers.RepeatedScalarFieldContainer[str]
    state: str
    blocked: str
    def __init__(self, transaction: _Optional[_Union[_coordinator_pb2.Transaction, _Mapping]] = ..., branches: _Optional[_Iterable[_Union[BranchState, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., blocked: _Optional[str] = ...) -> None: ...

class ScanResourceRequest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    def __init__(self, resource: _Optional[str] = ...) -> None: ...

class ScannedXid(_message.Message):
    __slots__ = ("raw", "gtrid", "bqual", "owner", "logged_state", "deadline_unix_ms")
    RAW_FIELD_NUMBER: _ClassVar[int]
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LOGGED_STATE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    raw: str
    gtrid: str
    bqual: str
    owner: str
    logged_state: _coordinator_pb2.TransactionState
    deadline_unix_ms: int
    def __init__(self, raw: _Optional[str] = ..., gtrid: _Optional[str] = ..., bqual: _Optional[str] = ..., owner: _Optional[str] = ..., logged_state: _Optional[_Union[_coordinator_pb2.TransactionState, str]] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class ScanResourceResponse(_message.Message):
    __slots__ = ("resource", "xids")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    XIDS_FIELD_NUMBER: _ClassVar[int]
    resource: str
    xids: _containers.RepeatedCompositeFieldContainer[ScannedXid]
    def __init__(self, resource: _Optional[str] = ..., xids: _Optional[_Iterable[_Union[ScannedXid, _Mapping]]] = ...) -> None: ...

class RecoverRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class RecoveryAction(_message.Message):
    __slots__ = ("gtrid", "resource", "action", "result")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    resource: str
    action: str
    result: str
    def __init__(self, gtrid: _Optional[str] = ..., resource: _Optional[str] = ..., action: _Optional[str] = ..., result: _Optional[str] = ...) -> None: ...

class RecoveryReport(_message.Message):
    __slots__ = ("started_unix_ms", "finished_unix_ms", "dry_run", "actions", "errors", "omitted_actions", "in_doubt")
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_DOUBT_FIELD_NUMBER: _ClassVar[int]
    started_unix_ms: int
    finished_unix_ms: int
    dry_run: bool
    actions: _containers.RepeatedCompositeFieldContainer[RecoveryAction]
    errors: _containers.RepeatedScalarFieldContainer[str]
    omitted_actions: int
    in_doubt: int
    def __init__(self, started_unix_ms: _Optional[int] = ..., finished_unix_ms: _Optional[int] = ..., dry_run: _Optional[bool] = ..., actions: _Optional[_Iterable[_Union[RecoveryAction, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ..., omitted_actions: _Optional[int] = ..., in_doubt: _Optional[int] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("gtrid", "commit", "reason", "force")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    commit: bool
    reason: str
    force: bool
    def __init__(self, gtrid: _Optional[str] = ..., commit: _Optional[bool] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("decision", "actions")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    decision: _coordinator_pb2.Decision
    actions: _containers.RepeatedCompositeFieldContainer[RecoveryAction]
    def __init__(self, decision: _Optional[_Union[_coordinator_pb2.Decision, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[RecoveryAction, _Mapping]]] = ...) -> None: ...
