"""The decision log's interface: plain records, the `DecisionLog` protocol, and the rules
every store applies. The embedded SQLite store is `sqlite`; another store (PostgreSQL, for
replicas sharing one log) is one more module beside it that implements `DecisionLog`.

A store keeps one row per gtrid and applies these rules inside its own write transaction, so
that they hold for several writers sharing one log too: the first decision wins through the
unique key on gtrid (a conditional update of an active row, or an insert that does nothing on
conflict, then a read-back of the row), never through a lock in memory (docs/design.md §3,
invariant 1).

Begin (`record_begun`)
    Inserts active rows. Not durable when the call returns (presumed abort, see below).
Commit (`decide`, a `Proposal` with commit=True)
    active and now < deadline: COMMITTED (the branches are stored). active past the deadline:
    ABORTED "deadline passed". Unknown gtrid handed out by Begin (`ts1`): an aborted row is
    inserted ("unknown transaction": its Begin was lost) and the answer is ABORTED. Unknown
    gtrid made by a client (`ts2`, `Proposal.minted`): decided by the deadline in it, like an
    active row (the client never asked Begin; the caller checked the deadline is no further
    than the maximum lifetime). Already decided: that decision, unchanged (a duplicate Commit
    of a committed gtrid gets COMMITTED again).
Abort (`decide`, commit=False)
    active or unknown: ABORTED with the caller's reason; already committed: COMMITTED, the
    decision in force.
Presumed abort without a row (`Proposal.presumed_if_late`, set for the wire's Commit and Abort)
    An unknown gtrid whose own deadline has passed is answered ABORTED ("deadline passed") and
    nothing is written: no Begin row can make it committable any more (a row's deadline is
    never later than its gtrid's) and every later Commit is late, so presumed abort answers
    it the same way for good. A peer's made-up gtrids then cost no rows. Recovery's own
    ABORTs of orphaned branches still write theirs (they carry the branches to finish).
Ack (`record_acks`)
    Marks a decided transaction completed (phase 2 finished). With one_phase_commit an active
    transaction becomes COMMITTED ("one-phase commit by the client"): the client committed its
    only branch itself and never asked. An unknown gtrid is ignored. Not durable on return.

Resolve (`resolve`, an operator's `Resolution`; the one way a decision can change)
    Unknown gtrid or active row: ABORT is decided like a client's Abort; COMMIT is refused
    unless forced (no decision means presumed abort, and a client may still be preparing).
    Decided the same way: accepted, the decision unchanged. Decided the other way: refused
    unless forced; forced, the decision is overwritten (a heuristic decision by the operator,
    the documented exception to "one decision"). Every accepted resolution clears
    `completed_ms` so recovery finishes the branches again. Every call, refused or accepted,
    leaves an audit note, written in the same transaction as the decision.
Notes (`add_notes`)
    Heuristic outcomes, audit records and recovery remarks about a gtrid, oldest first;
    durable when `add_notes` returns. A note never changes a decision.
Prune (`prune`)
    Deletes finished transactions (decided and completed) completed before a cutoff, with
    their notes, at most `limit` rows per call, so that each call is one short write between
    the decisions (notes about gtrids the log has no row of go too, once as old). Recovery
    calls it with `now - retention` (`twostep.coordinator.recovery.retention`). A pruned gtrid
    is unknown again: a Commit for it gets ABORTED, so retention must outlast every client
    that may still ask (the settings check it). An active transaction is never pruned;
    recovery aborts it first once it is past its deadline and nothing of it is prepared
    (presumed abort made explicit).

`decide` returns only after the batch holding the decisions is on disk (fsync), for Abort as
well as Commit: a caller told ABORTED may roll prepared branches back, so that answer must
survive a crash just like COMMITTED (an ABORT lost in a crash would leave the row active and
decidable, and a later Commit would then get COMMITTED for rolled-back branches).

What a crash leaves behind (presumed abort)
    After a restart a transaction is exactly what its row says; nothing else is remembered.
    - Its Begin reached disk, no decision did: the row is active and stays decidable until its
      deadline, as if the coordinator had never stopped. Nobody was told anything about it but
      its gtrid and deadline, so either outcome is still free to choose: a Commit before the
      deadline gets COMMITTED, after it ABORTED ("deadline passed").
    - Its Begin was lost (the reply can leave before the row is durable): the gtrid is unknown,
      and a Commit gets ABORTED ("unknown transaction") at once, even before its deadline.
    - A Commit or Abort whose batch was lost was never answered (answers wait for the fsync),
      so it is as if it had never been sent; the client asks again and gets one of the above.
    Which of the first two happens to a transaction in flight at the crash is luck; both are
    correct, because neither can produce a COMMITTED past the deadline or contradict an answer
    already given, and a client cannot tell either from an ordinary ABORTED. Recovery judges an
    orphaned prepared branch by the deadline inside its gtrid, which is never earlier than the
    row's (the gtrid carries the deadline rounded up to whole seconds).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ABORTED_BY_CLIENT",
    "DEADLINE_PASSED",
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
    "Proposal",
    "Resolution",
    "Resolved",
    "State",
    "TransactionRecord",
    "audit_text",
    "merged_branches",
    "refusal_of",
    "unknown_commit_decision",
]


class State(enum.StrEnum):
    """A transaction's state as the log stores it."""

    ACTIVE = "active"
    COMMITTED = "committed"
    ABORTED = "aborted"


# Reasons the log itself writes (the client's own Abort reasons are stored as given).
DEADLINE_PASSED = "deadline passed"
UNKNOWN_TRANSACTION = "unknown transaction"
ONE_PHASE_COMMIT = "one-phase commit by the client"
ABORTED_BY_CLIENT = "aborted by the client"
RESOLVED_BY_OPERATOR = "resolved by operator"  # followed by ": <the operator's reason>"


class LogUnavailable(Exception):
    """The log could not record or confirm a request (closed, or its write failed).

    For a Commit this means "ask again": the decision may or may not have been taken.
    """


class LogBusy(LogUnavailable):
    """The log's queue is full: the request was refused without being queued, so nothing of
    it was recorded; ask again later."""


@dataclass(frozen=True)
class BranchRecord:
    """One database branch of a transaction (the wire's `Branch`)."""

    resource: str
    bqual: str
    dialect: str
    session_id: int = 0  # MySQL: the owner session's id
    transaction_id: int = 0  # PostgreSQL: the prepared transaction's xid8


@dataclass(frozen=True)
class Begun:
    """A transaction handed out by Begin; times are unix epoch milliseconds."""

    gtrid: str
    begun_ms: int
    deadline_ms: int


@dataclass(frozen=True)
class Proposal:
    """A request for a decision: Commit (commit=True) or Abort (with the client's reason).

    `fallback_deadline_ms` is the deadline written into the gtrid itself; the log stores it
    when it first hears of the gtrid here (unknown transaction), for recovery to judge by.
    `minted`: the gtrid was made by a client (`ts2`); unknown, a Commit for it is decided by
    that deadline instead of being aborted as a lost Begin. `presumed_if_late`: unknown and
    past that deadline, answered by presumption with no row written (the rule above).
    """

    gtrid: str
    commit: bool
    branches: tuple[BranchRecord, ...] = ()
    reason: str = ""
    fallback_deadline_ms: int = 0
    minted: bool = False
    presumed_if_late: bool = False


@dataclass(frozen=True)
class Decision:
    """The decision in force for a gtrid after a `Proposal`: never ACTIVE. `taken`: this call
    took it (False: an earlier one had, e.g. a duplicate Commit), so each is counted once."""

    gtrid: str
    state: State
    reason: str
    taken: bool


@dataclass(frozen=True)
class Ack:
    """The client finished phase 2 (or, one_phase_commit, committed its only branch itself)."""

    gtrid: str
    one_phase_commit: bool = False


@dataclass(frozen=True)
class TransactionRecord:
    """Everything the log knows about one gtrid; times are unix epoch milliseconds."""

    gtrid: str
    state: State
    begun_ms: int
    deadline_ms: int
    decided_ms: int | None
    reason: str
    branches: tuple[BranchRecord, ...]
    completed_ms: int | None

    @property
    def completed(self) -> bool:
        return self.completed_ms is not None


@dataclass(frozen=True)
class ListQuery:
    """Filters of `DecisionLog.list_transactions`; the result is oldest first (by begin time)."""

    states: frozenset[State] = frozenset()  # empty: every state
    begun_before_ms: int | None = None  # only transactions begun before this time
    incomplete_only: bool = False  # only those whose phase 2 is not acknowledged
    limit: int = 1000
    decided_before_ms: int | None = None  # only transactions decided before this time
    #: Paging: only rows after this (begun_ms, gtrid), i.e. after the last row of a page.
    after: tuple[int, str] | None = None
    deadline_before_ms: int | None = None  # only transactions whose deadline is before this


@dataclass(frozen=True)
class Note:
    """A remark kept about a gtrid: a heuristic outcome, an audit record, a recovery step."""

    gtrid: str
    at_ms: int
    kind: str  # "heuristic", "resolve", "blocked", "kill", ...
    text: str


@dataclass(frozen=True)
class Resolution:
    """An operator's request to force COMMIT (commit=True) or ABORT of a gtrid.

    `branches` are the prepared branches found on the databases; they are stored when the
    log has none for the gtrid. `fallback_deadline_ms` as in `Proposal`; `who` names the
    caller in the audit note.
    """

    gtrid: str
    commit: bool
    reason: str
    force: bool = False
    branches: tuple[BranchRecord, ...] = ()
    fallback_deadline_ms: int = 0
    who: str = ""


@dataclass(frozen=True)
class Resolved:
    """What `resolve` did: accepted or refused (with why), and the decision now in force.

    `decision` is None only when a refused request left the gtrid unknown or active.
    """

    accepted: bool
    decision: Decision | None
    previous: State | None  # the state before the call; None: the gtrid was unknown
    why: str


# -- the parts of the rules that need no store: each store's SQL calls these -------------------


def unknown_commit_decision(proposal: Proposal, now_ms: int) -> tuple[State, str]:
    """The Commit rule for a gtrid the log has no row of: (state, reason) to insert."""
    if not proposal.minted:
        return State.ABORTED, UNKNOWN_TRANSACTION  # its Begin was lost
    if now_ms < proposal.fallback_deadline_ms:  # never begun: decided like an active row
        return State.COMMITTED, ""
    return State.ABORTED, DEADLINE_PASSED


def refusal_of(resolution: Resolution, previous: State | None, previous_reason: str) -> str:
    """Why the Resolve rule refuses `resolution` given the state in force ("": accepted)."""
    if previous in (None, State.ACTIVE):
        if resolution.commit and not resolution.force:
            return (
                "no decision is logged (presumed abort"
                + (", and its client may still be preparing" if previous else "")
                + "): committing it needs force"
            )
        return ""
    wanted = State.COMMITTED if resolution.commit else State.ABORTED
    if previous is not wanted and not resolution.force:
        # A client's Commit records no reason; an abort always has one.
        why = previous_reason or (
            "by its client's Commit" if previous is State.COMMITTED else "no reason recorded"
        )
        return (
            f"the logged decision is {previous.value.upper()} ({why}): contradicting it needs force"
        )
    return ""


def merged_branches(
    stored: Sequence[BranchRecord], found: Sequence[BranchRecord]
) -> list[BranchRecord]:
    """A resolution's branches: the stored ones, then those found on other resources."""
    known = {b.resource for b in stored}
    return [*stored, *(b for b in found if b.resource not in known)]


def audit_text(resolution: Resolution, previous: State | None, refusal: str) -> str:
    """The audit note every Resolve call leaves, refused or accepted."""
    r = resolution
    verb = "commit" if r.commit else "abort"
    was = previous.value if previous else "unknown"
    outcome = f"refused: {refusal}" if refusal else "accepted"
    return (
        f"resolve {verb}{' (force)' if r.force else ''} by {r.who or 'unknown caller'}: "
        f"{outcome}; was {was}; reason: {r.reason or '(none)'}"
    )


class DecisionLog(Protocol):
    """Where the coordinator's decisions live. Every method is safe to call from any thread."""

    def record_begun(self, begun: Sequence[Begun]) -> None:
        """Queue active rows; returns before they are durable (presumed abort). Raises
        `LogBusy` (nothing queued) when the queue is full, like `decide` and `record_acks`."""

    def decide(self, proposals: Sequence[Proposal]) -> list[Decision]:
        """Apply the rules above; returns the decisions in force, in order, once durable.

        Raises `LogUnavailable` when that cannot be confirmed (for a Commit: ask again).
        """
        ...

    def decide_nowait(self, proposals: Sequence[Proposal]) -> Future[list[Decision]]:
        """`decide` without blocking: queues the proposals and returns a future of what
        `decide` returns (or of its `LogUnavailable`), for a caller on an event loop (wrap it
        with `asyncio.wrap_future`). Raises `LogBusy` / `LogUnavailable` at once when nothing
        was queued. The future cannot be cancelled: the decision is taken all the same."""
        ...

    def record_acks(self, acks: Sequence[Ack]) -> None:
        """Queue acknowledgements; returns before they are durable."""

    def get(self, gtrid: str) -> TransactionRecord | None:
        """The row of `gtrid` as last made durable, or None when the log has none."""
        ...

    def list_transactions(self, query: ListQuery) -> list[TransactionRecord]:
        """Rows matching `query`, oldest first, at most `query.limit`."""
        ...

    def resolve(self, resolution: Resolution) -> Resolved:
        """Apply the Resolve rule above with its audit note, atomically; returns once durable.

        Raises `LogUnavailable` like `decide`.
        """
        ...

    def add_notes(self, notes: Sequence[Note]) -> None:
        """Keep notes about gtrids; returns once they are durable (`LogUnavailable` if not)."""

    def notes(self, gtrid: str) -> list[Note]:
        """The notes about `gtrid`, oldest first."""
        ...

    def summary(self, *, incomplete_only: bool = False) -> dict[tuple[State, bool], int]:
        """How many transactions there are per (state, completed); `incomplete_only`: only
        those whose phase 2 is not acknowledged (cheap: what is in flight or in doubt, not
        every finished row kept for `retention`)."""
        ...

    def newest_gtrid(self) -> str | None:
        """The gtrid begun last; None if the log is empty."""
        ...

    def take_work(self, gtrids: Sequence[str]) -> AbstractContextManager[set[str]]:
        """Of `gtrids`, those recovery may work on until the block ends: none that another
        coordinator sharing the log is working on (the embedded store has one: all of them).
        Raises `LogUnavailable` when that cannot be found out."""
        ...

    def prune(self, completed_before_ms: int, limit: int) -> int:
        """Apply the Prune rule above to at most `limit` transactions; how many it deleted.

        Returns once the deletion is durable; raises `LogUnavailable` like `decide`.
        """
        ...

    def flush(self) -> None:
        """Return once everything queued before the call is durable (or failed)."""

    def close(self) -> None:
        """Write what is queued, then release the store; later calls raise `LogUnavailable`."""
