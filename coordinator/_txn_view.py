"""What an operator sees of transactions: each one's state word (`TxnState`, defined once in
`twostep.client.txn_states`), why recovery could not finish it, counts and filtered lists.

The log gives the decision and whether phase 2 is finished; recovery adds the orphans its
last whole pass found (prepared, no decision, past the deadline; the log may have no row of
them) and the branches it could not finish (blocked). Admin's Status, ListTransactions and
ShowTransaction all read them here, so that they never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from twostep.client.tpc import parse_gtrid
from twostep.client.txn_states import GROUPS, IN_DOUBT, TxnState, state_of

from ._wire import BadRequest
from .log import DecisionLog, ListQuery, State, TransactionRecord
from .recovery import Recovery

__all__ = ["Counts", "Listed", "TxnView"]

_PAGE = 1000


@dataclass(frozen=True)
class Listed:
    """A transaction with its state; `blocked`: why recovery could not finish it ("").
    `logged`: the log has a row of it (else `record` stands in for an orphan's)."""

    record: TransactionRecord
    state: TxnState
    blocked: str
    logged: bool = True


@dataclass(frozen=True)
class Counts:
    by_state: dict[TxnState, int]
    blocked: int

    @property
    def in_doubt(self) -> int:
        return sum(self.by_state[s] for s in IN_DOUBT)


class TxnView:
    def __init__(self, decision_log: DecisionLog, recovery: Recovery):
        self._log = decision_log
        self._recovery = recovery

    def show(self, gtrid: str, record: TransactionRecord | None) -> tuple[TxnState, str]:
        """The state and the blocked reason of one transaction (`record`: its log row)."""
        orphaned = gtrid in self._recovery.orphans()
        logged = record.state.value if record else None
        state = state_of(logged, bool(record and record.completed), orphaned)
        return state, self._blocked(gtrid, state)

    def counts(self, *, incomplete_only: bool = False) -> Counts:
        """Transactions by state; `incomplete_only`: the finished states are left at 0 (the
        log then reads its incomplete rows only: cheap enough for every recovery pass)."""
        summary = self._log.summary(incomplete_only=incomplete_only)
        by_state = {s: 0 for s in TxnState}
        for (logged, completed), n in summary.items():
            by_state[state_of(logged.value, completed, False)] += n
        for gtrid in self._recovery.orphans():
            record = self._log.get(gtrid)
            if record is None or record.state is State.ACTIVE:
                by_state[TxnState.ORPHANED] += 1
                by_state[TxnState.ACTIVE] -= record is not None
        blocked = sum(1 for g in self._recovery.in_doubt() if self.show(g, self._log.get(g))[1])
        return Counts(by_state, blocked)

    def list(self, word: str, begun_before_ms: int | None, limit: int) -> list[Listed]:
        """Transactions in state `word` (a `TxnState`, a `GROUPS` name, or "" for all),
        begun before `begun_before_ms` (None: any), oldest first, at most `limit`.

        Raises `BadRequest` for an unknown word."""
        if word in GROUPS:
            wanted = GROUPS[word][1]
        elif word in set(TxnState):
            wanted = frozenset({TxnState(word)})
        elif word == "":
            wanted = frozenset(TxnState)
        else:
            choices = ", ".join([*TxnState, *GROUPS])
            raise BadRequest(f"state: {word!r} is none of {choices}")
        if word == "blocked":
            candidates = self._rows(self._recovery.in_doubt())
        else:
            candidates = [(r, True) for r in self._from_log(wanted, begun_before_ms, limit)]
            if TxnState.ORPHANED in wanted:
                candidates += self._rows(self._recovery.orphans())
        found: dict[str, Listed] = {}
        for record, logged in candidates:
            state, blocked = self.show(record.gtrid, record)
            if state not in wanted or (word == "blocked" and not blocked):
                continue
            if begun_before_ms is not None and _begun(record) >= begun_before_ms:
                continue
            found[record.gtrid] = Listed(record, state, blocked, logged)
        listed = sorted(found.values(), key=lambda t: (_begun(t.record), t.record.gtrid))
        return listed[:limit]

    def _from_log(
        self, wanted: frozenset[TxnState], begun_before_ms: int | None, limit: int
    ) -> list[TransactionRecord]:
        """Log rows that may be in a `wanted` state, a page at a time until `limit` are."""
        logged = {_LOGGED[s] for s in wanted}
        unfinished_only = wanted <= IN_DOUBT | {TxnState.ACTIVE}
        query = ListQuery(
            states=frozenset(logged),
            begun_before_ms=begun_before_ms,
            incomplete_only=unfinished_only,
            limit=_PAGE,
        )
        rows: list[TransactionRecord] = []
        while True:
            page = self._log.list_transactions(query)
            rows += page
            matching = sum(1 for r in rows if state_of(r.state.value, r.completed, False) in wanted)
            if len(page) < _PAGE or matching >= limit:
                return rows
            query = replace(query, after=(page[-1].begun_ms, page[-1].gtrid))

    def _rows(self, gtrids: Iterable[str]) -> list[tuple[TransactionRecord, bool]]:
        """The log rows of `gtrids` (row, True); an orphan without one: (stand-in, False)."""
        orphans = self._recovery.orphans()
        rows = []
        for gtrid in gtrids:
            record = self._log.get(gtrid)
            if record is not None:
                rows.append((record, True))
                continue
            deadline_ms = parse_gtrid(gtrid).deadline_unix_s * 1000
            branches = tuple(orphans.get(gtrid, ()))
            stand_in = TransactionRecord(
                gtrid, State.ACTIVE, 0, deadline_ms, None, "", branches, None
            )
            rows.append((stand_in, False))
        return rows

    def _blocked(self, gtrid: str, state: TxnState) -> str:
        if state not in IN_DOUBT:
            return ""
        pending = self._recovery.pending(gtrid)
        return "; ".join(f"{resource or 'log'}: {why}" for resource, why in pending.items())


_LOGGED = {
    TxnState.ACTIVE: State.ACTIVE,
    TxnState.ORPHANED: State.ACTIVE,
    TxnState.COMMITTING: State.COMMITTED,
    TxnState.COMMITTED: State.COMMITTED,
    TxnState.ABORTING: State.ABORTED,
    TxnState.ABORTED: State.ABORTED,
}


def _begun(record: TransactionRecord) -> int:
    """When it began; for an orphan the log has no row of, its deadline (it began before)."""
    return record.begun_ms or record.deadline_ms
