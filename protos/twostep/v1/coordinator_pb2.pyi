from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_STATE_UNSPECIFIED: _ClassVar[TransactionState]
    TRANSACTION_STATE_ACTIVE: _ClassVar[TransactionState]
    TRANSACTION_STATE_COMMITTED: _ClassVar[TransactionState]
    TRANSACTION_STATE_ABORTED: _ClassVar[TransactionState]
TRANSACTION_STATE_UNSPECIFIED: TransactionState
TRANSACTION_STATE_ACTIVE: TransactionState
TRANSACTION_STATE_COMMITTED: TransactionState
TRANSACTION_STATE_ABORTED: TransactionState

class Branch(_message.Message):
    __slots__ = ("resource", "bqual", "dialect", "session_id", "transaction_id")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    bqual: str
    dialect: str
    session_id: int
    transaction_id: int
    def __init__(self, resource: _Optional[str] = ..., bqual: _Optional[str] = ..., dialect: _Optional[str] = ..., session_id: _Optional[int] = ..., transaction_id: _Optional[int] = ...) -> None: ...

class BeginRequest(_message.Message):
    __slots__ = ("timeout_ms", "count")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    count: int
    def __init__(self, timeout_ms: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("gtrid", "deadline_unix_ms", "timeout_ms")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    deadline_unix_ms: int
    timeout_ms: int
    def __init__(self, gtrid: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class BeginResponse(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Started]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Started, _Mapping]]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("cluster_id", "max_timeout_ms", "default_timeout_ms", "now_unix_ms", "owner_tag")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_TAG_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    max_timeout_ms: int
    default_timeout_ms: int
    now_unix_ms: int
    owner_tag: str
    def __init__(self, cluster_id: _Optional[str] = ..., max_timeout_ms: _Optional[int] = ..., default_timeout_ms: _Optional[int] = ..., now_unix_ms: _Optional[int] = ..., owner_tag: _Optional[str] = ...) -> None: ...

class CommitItem(_message.Message):
    __slots__ = ("gtrid", "branches")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    branches: _containers.RepeatedCompositeFieldContainer[Branch]
    def __init__(self, gtrid: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[Branch, _Mapping]]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[CommitItem]
    def __init__(self, transactions: _Optional[_Iterable[_Union[CommitItem, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("gtrid", "state", "reason")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    state: TransactionState
    reason: str
    def __init__(self, gtrid: _Optional[str] = ..., state: _Optional[_Union[TransactionState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class AbortItem(_message.Message):
    __slots__ = ("gtrid", "reason", "branches")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    reason: str
    branches: _containers.RepeatedCompositeFieldContainer[Branch]
    def __init__(self, gtrid: _Optional[str] = ..., reason: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[Branch, _Mapping]]] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[AbortItem]
    def __init__(self, transactions: _Optional[_Iterable[_Union[AbortItem, _Mapping]]] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class AckItem(_message.Message):
    __slots__ = ("gtrid", "one_phase_commit")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    one_phase_commit: bool
    def __init__(self, gtrid: _Optional[str] = ..., one_phase_commit: _Optional[bool] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[AckItem]
    def __init__(self, transactions: _Optional[_Iterable[_Union[AckItem, _Mapping]]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTransactionRequest(_message.Message):
    __slots__ = ("gtrid",)
    GTRID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    def __init__(self, gtrid: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("gtrid", "state", "begun_unix_ms", "deadline_unix_ms", "decided_unix_ms", "reason", "branches", "completed")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BEGUN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    state: TransactionState
    begun_unix_ms: int
    deadline_unix_ms: int
    decided_unix_ms: int
    reason: str
    branches: _containers.RepeatedCompositeFieldContainer[Branch]
    completed: bool
    def __init__(self, gtrid: _Optional[str] = ..., state: _Optional[_Union[TransactionState, str]] = ..., begun_unix_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., decided_unix_ms: _Optional[int] = ..., reason: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[Branch, _Mapping]]] = ..., completed: _Optional[bool] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("states", "older_than_s", "incomplete_only", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[TransactionState]
    older_than_s: int
    incomplete_only: bool
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[TransactionState, str]]] = ..., older_than_s: _Optional[int] = ..., incomplete_only: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...
