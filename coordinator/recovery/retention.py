"""What the decision log keeps, and for how long: abandoned transactions expire, finished
ones are pruned. Both run at the end of every recovery pass (`loop`).

Expiry: presumed abort made explicit
    A Begin whose client died, a one-phase commit whose Ack was lost, a Begin re-read after a
    restart: each leaves a row active forever, counted as active by Status and never pruned.
    Rule: an active transaction whose deadline + `recovery_grace` has passed and none of
    whose branches the pass found prepared on a scanned resource gets a durable ABORT
    (`EXPIRED_REASON`, through `decide`, so the first decision still wins) and is marked
    completed. Deciding ABORT for an active row past its deadline is always safe: a Commit
    would be answered ABORTED anyway ("deadline passed"). A branch of it that turns up
    prepared later (on a resource that could not be scanned, or prepared by a very late
    client) is rolled back by recovery like any branch of an ABORT decision, and a branch the
    pass did find prepared is left to the orphan rule (decide ABORT, then roll back).
Pruning
    Transactions completed more than `retention` ago are deleted with their notes (the
    log's `prune`), `PRUNE_BATCH` rows per writer transaction and as many of those as it takes,
    so that a Commit waits for at most one small batch, never for the whole cleanup. In-doubt
    (incomplete) transactions are never pruned. The settings keep `retention` above
    max_timeout + the client's patience, so no client still asking for a decision can find
    its gtrid pruned (it would be answered ABORTED, presumed abort).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace

from ..log import Ack, DecisionLog, ListQuery, LogUnavailable, Proposal, State, TransactionRecord

__all__ = ["EXPIRED_REASON", "PRUNE_BATCH", "expire", "prune"]

EXPIRED_REASON = "expired: undecided past its deadline + grace, no branch found prepared"
PRUNE_BATCH = 500  # rows deleted per writer transaction: a few milliseconds of the writer
_PAGE = 1000  # active transactions read (and decided) at a time


def expire(
    decision_log: DecisionLog,
    deadline_before_ms: int,
    prepared: Collection[str],
    *,
    dry_run: bool,
) -> list[tuple[str, str]]:
    """Expire every active transaction with a deadline before `deadline_before_ms` whose gtrid
    is not in `prepared`. (gtrid, result) for each: "done", "planned" (dry run), "waiting:
    decided committed meanwhile", or "failed: ..." (the log failed; the rest waits a pass)."""
    query = ListQuery(
        states=frozenset({State.ACTIVE}), deadline_before_ms=deadline_before_ms, limit=_PAGE
    )
    results: list[tuple[str, str]] = []
    while True:
        page = decision_log.list_transactions(query)
        due = [r for r in page if r.gtrid not in prepared]
        if dry_run:
            results += [(r.gtrid, "planned") for r in due]
        elif due:
            try:
                results += _abort(decision_log, due)
            except LogUnavailable as exc:
                why = f"failed: the decision log is unavailable ({exc}); retrying"
                return results + [(r.gtrid, why) for r in due]
        if len(page) < _PAGE:
            return results
        query = replace(query, after=(page[-1].begun_ms, page[-1].gtrid))


def _abort(decision_log: DecisionLog, due: list[TransactionRecord]) -> list[tuple[str, str]]:
    proposals = [
        Proposal(r.gtrid, commit=False, reason=EXPIRED_REASON, fallback_deadline_ms=r.deadline_ms)
        for r in due
    ]
    decisions = decision_log.decide(proposals)
    aborted = [d.gtrid for d in decisions if d.state is State.ABORTED]
    decision_log.record_acks([Ack(gtrid) for gtrid in aborted])  # nothing is left to finish
    decision_log.flush()  # a pass's report is what the log says once it returns
    return [
        (d.gtrid, "done" if d.state is State.ABORTED else f"waiting: decided {d.state} meanwhile")
        for d in decisions
    ]


def prune(decision_log: DecisionLog, completed_before_ms: int, stop: Callable[[], bool]) -> int:
    """Delete the transactions completed before `completed_before_ms`, batch after batch,
    until none is left or `stop()`; how many were deleted. Raises `LogUnavailable`."""
    total = 0
    while not stop():
        deleted = decision_log.prune(completed_before_ms, PRUNE_BATCH)
        total += deleted
        if deleted < PRUNE_BATCH:
            break
    return total
