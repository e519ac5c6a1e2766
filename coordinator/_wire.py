"""The wire contract's messages, checked field by field and turned into the log's records.

Every request is validated whole before anything is recorded: the first bad field raises
`BadRequest` whose message names the field (`transactions[2].branches[0].resource`) and why;
the servicer answers INVALID_ARGUMENT with it. The limits (`MAX_*`, also written in the .proto)
bound what one call can make the coordinator hold and write; a gtrid whose deadline is further
away than any this coordinator hands out or accepts (`max_timeout` from now) is refused in
Commit and Abort alike, so a made-up gtrid is either refused or (already late) answered by
presumption without a row (`log.interface`, `Proposal.presumed_if_late`). Identifiers are
checked by the one xid codec (`twostep.client.tpc.xid`), never by a second copy of its rules.

Every gtrid of a Coordinator request passes `gtrid_of`, which also applies the ownership rule
(`Caller.may_act_on`): a gtrid the caller may not act on fails the whole request with
`NotOwner` (PERMISSION_DENIED), before anything is recorded or read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twostep.client import InvalidIdentifier
from twostep.client.tpc import GtridInfo, parse_gtrid, validate_bqual, validate_resource_name
from twostep.v1 import coordinator_pb2 as _pb

from ._callers import Caller
from .log import (
    Ack,
    BranchRecord,
    Decision,
    ListQuery,
    Proposal,
    State,
    TransactionRecord,
)

__all__ = [
    "DIALECTS",
    "MAX_BEGIN_COUNT",
    "MAX_BRANCHES",
    "MAX_CALL_BRANCHES",
    "MAX_ITEMS",
    "MAX_LIST_LIMIT",
    "MAX_REASON_CHARS",
    "BadRequest",
    "NotOwner",
    "Scope",
    "abort_proposals",
    "acks",
    "begin_count",
    "commit_proposals",
    "decision_to_pb",
    "gtrid_of",
    "list_query",
    "reason_problem",
    "transaction_to_pb",
]

MAX_ITEMS = 1000  # transactions in one Commit, Abort or Ack
MAX_BEGIN_COUNT = 1000  # gtrids handed out by one Begin
MAX_BRANCHES = 64  # branches of one transaction
#: Branches of all transactions of one Commit or Abort: 1000 two-branch transactions fit, 1000
#: of 64 branches (65 MB of rows and JSON, issue 11) do not.
MAX_CALL_BRANCHES = 4096
MAX_REASON_CHARS = 1000
MAX_LIST_LIMIT = 1000  # also ListTransactions' default
DIALECTS = frozenset({"postgresql", "mysql"})

_STATES_TO_PB = {
    State.ACTIVE: _pb.TRANSACTION_STATE_ACTIVE,
    State.COMMITTED: _pb.TRANSACTION_STATE_COMMITTED,
    State.ABORTED: _pb.TRANSACTION_STATE_ABORTED,
}
_STATES_FROM_PB = {number: state for state, number in _STATES_TO_PB.items()}


class BadRequest(ValueError):
    """A request field is invalid; the message says which and why. Nothing was recorded."""


class NotOwner(Exception):
    """A request names a gtrid its caller may not act on (another identity's). Nothing was
    recorded or read."""


@dataclass(frozen=True)
class Scope:
    """Which gtrids a request may name: those of `cluster` that `caller` may act on."""

    cluster: str
    caller: Caller


@dataclass(frozen=True)
class _Field:
    """The path of the field being checked, for messages."""

    path: str

    def __getitem__(self, index: int) -> _Field:
        return _Field(f"{self.path}[{index}]")

    def __truediv__(self, name: str) -> _Field:
        return _Field(f"{self.path}.{name}" if self.path else name)

    def bad(self, why: str) -> BadRequest:
        return BadRequest(f"{self.path}: {why}")


_ROOT = _Field("")


# -- requests ----------------------------------------------------------------------------------


def begin_count(request: _pb.BeginRequest) -> int:
    """How many gtrids to hand out (the timeout is clamped, never refused)."""
    count = request.count or 1
    if count > MAX_BEGIN_COUNT:
        raise (_ROOT / "count").bad(f"{count} is more than {MAX_BEGIN_COUNT}")
    return count


def gtrid_of(value: str, scope: Scope, at: _Field = _ROOT / "gtrid") -> GtridInfo:
    """A gtrid of this coordinator's cluster that the caller may act on; `BadRequest` if it is
    not one of the cluster's, `NotOwner` if it is another identity's."""
    try:
        info = parse_gtrid(value)
    except InvalidIdentifier as exc:
        raise at.bad(str(exc)) from None
    if info.cluster != scope.cluster:
        raise at.bad(
            f"belongs to coordinator cluster {info.cluster!r}, this one is {scope.cluster!r}"
        )
    if not scope.caller.may_act_on(info):
        whose = (
            "was made before owner tags: only an admin may act on it"
            if not info.owner
            else f"belongs to another identity than this caller's ({scope.caller.name}): only "
            "its owner or an admin may act on it"
        )
        raise NotOwner(f"{at.path}: {info.gtrid} {whose}")
    return info


def commit_proposals(
    request: _pb.CommitRequest, scope: Scope, latest_deadline_ms: int
) -> list[Proposal]:
    """Commit proposals; a client-made gtrid's deadline may be no later than
    `latest_deadline_ms` (now + the maximum lifetime, by the coordinator's clock)."""
    proposals = []
    for at, item, info in _items(request.transactions, scope, latest_deadline_ms):
        if not item.branches:
            raise (at / "branches").bad("Commit needs at least one prepared branch")
        branches = _branches(item.branches, at / "branches")
        deadline_ms = info.deadline_unix_s * 1000
        proposals.append(Proposal(info.gtrid, True, branches, "", deadline_ms, info.minted, True))
    return proposals


def abort_proposals(
    request: _pb.AbortRequest, scope: Scope, latest_deadline_ms: int
) -> list[Proposal]:
    """Abort proposals; every gtrid's deadline no later than `latest_deadline_ms`."""
    proposals = []
    for at, item, info in _items(request.transactions, scope, latest_deadline_ms):
        problem = reason_problem(item.reason)
        if problem:
            raise (at / "reason").bad(problem)
        branches = _branches(item.branches, at / "branches")
        deadline_ms = info.deadline_unix_s * 1000
        proposals.append(
            Proposal(info.gtrid, False, branches, item.reason, deadline_ms, presumed_if_late=True)
        )
    return proposals


def reason_problem(reason: str) -> str | None:
    """What is wrong with an Abort's or a Resolve's reason, if anything: it must be at most
    `MAX_REASON_CHARS` characters of valid UTF-8 (a lone surrogate is not)."""
    if len(reason) > MAX_REASON_CHARS:
        return f"longer than {MAX_REASON_CHARS} characters"
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (at character {exc.start})"
    return None


def acks(request: _pb.AckRequest, scope: Scope) -> list[Ack]:
    return [
        Ack(info.gtrid, item.one_phase_commit)
        for _, item, info in _items(request.transactions, scope)
    ]


def list_query(request: _pb.ListTransactionsRequest, now_ms: int) -> ListQuery:
    states = set()
    for i, number in enumerate(request.states):
        state = _STATES_FROM_PB.get(number)
        if state is None:
            raise (_ROOT / "states")[i].bad(f"{number} is not a transaction state")
        states.add(state)
    limit = request.limit or MAX_LIST_LIMIT
    if limit > MAX_LIST_LIMIT:
        raise (_ROOT / "limit").bad(f"{limit} is more than {MAX_LIST_LIMIT}")
    older = request.older_than_s
    return ListQuery(
        states=frozenset(states),
        begun_before_ms=now_ms - older * 1000 if older else None,
        incomplete_only=request.incomplete_only,
        limit=limit,
    )


def _items(
    items: Sequence, scope: Scope, latest_deadline_ms: int | None = None
) -> Iterable[tuple[_Field, Any, GtridInfo]]:
    """(path, item, parsed gtrid) of each item of a batch, checked for count, duplicates,
    branches in all (items with `branches`) and, given `latest_deadline_ms`, deadlines."""
    where = _ROOT / "transactions"
    if not items:
        raise where.bad("empty: name at least one transaction")
    if len(items) > MAX_ITEMS:
        raise where.bad(f"{len(items)} transactions, at most {MAX_ITEMS} in one call")
    branches = sum(len(getattr(item, "branches", ())) for item in items)
    if branches > MAX_CALL_BRANCHES:
        raise where.bad(f"{branches} branches in all, at most {MAX_CALL_BRANCHES} in one call")
    checked, seen = [], {}
    for i, item in enumerate(items):
        at = where[i]
        info = gtrid_of(item.gtrid, scope, at / "gtrid")
        if latest_deadline_ms is not None and info.deadline_unix_s * 1000 > latest_deadline_ms:
            raise (at / "gtrid").bad(
                "its deadline is further away than this coordinator's max_timeout allows"
            )
        if info.gtrid in seen:
            raise (at / "gtrid").bad(f"the same gtrid as transactions[{seen[info.gtrid]}]")
        seen[info.gtrid] = i
        checked.append((at, item, info))
    return checked


def _branches(branches: Sequence[_pb.Branch], where: _Field) -> tuple[BranchRecord, ...]:
    if len(branches) > MAX_BRANCHES:
        raise where.bad(f"{len(branches)} branches, at most {MAX_BRANCHES}")
    records: list[BranchRecord] = []
    resources: dict[str, int] = {}
    bquals: dict[str, int] = {}
    for i, branch in enumerate(branches):
        at = where[i]
        checks = (("resource", branch.resource, validate_resource_name),)
        checks += (("bqual", branch.bqual, validate_bqual),)
        for name, value, validate in checks:
            try:
                validate(value)
            except InvalidIdentifier as exc:
                raise (at / name).bad(str(exc)) from None
        if branch.dialect not in DIALECTS:
            raise (at / "dialect").bad(
                f"{branch.dialect!r:.40} is not one of {', '.join(sorted(DIALECTS))}"
            )
        if branch.resource in resources:
            raise (at / "resource").bad(
                f"{branch.resource!r} is already branches[{resources[branch.resource]}]"
            )
        if branch.bqual in bquals:
            raise (at / "bqual").bad(
                f"{branch.bqual!r} is already the bqual of branches[{bquals[branch.bqual]}]"
            )
        resources[branch.resource] = bquals[branch.bqual] = i
        records.append(
            BranchRecord(
                branch.resource,
                branch.bqual,
                branch.dialect,
                branch.session_id,
                branch.transaction_id,
            )
        )
    return tuple(records)


# -- replies -----------------------------------------------------------------------------------


def decision_to_pb(decision: Decision) -> _pb.Decision:
    return _pb.Decision(
        gtrid=decision.gtrid, state=_STATES_TO_PB[decision.state], reason=decision.reason
    )


def transaction_to_pb(record: TransactionRecord) -> _pb.Transaction:
    return _pb.Transaction(
        gtrid=record.gtrid,
        state=_STATES_TO_PB[record.state],
        begun_unix_ms=record.begun_ms,
        deadline_unix_ms=record.deadline_ms,
        decided_unix_ms=record.decided_ms or 0,
        reason=record.reason,
        branches=[
            _pb.Branch(
                resource=b.resource,
                bqual=b.bqual,
                dialect=b.dialect,
                session_id=b.session_id,
                transaction_id=b.transaction_id,
            )
            for b in record.branches
        ],
        completed=record.completed,
    )
