"""Every statement the embedded SQLite store runs: its schema, the rules of `interface` as
statements inside the writer's one transaction, and the reads.

The rules: for each decision one INSERT .. ON CONFLICT (gtrid) DO UPDATE .. WHERE state =
'active' RETURNING, which inserts an unknown gtrid as aborted or decides an active row, and a
read-back of the row when it was decided already. The first decision wins through the primary
key, so the rules hold also when several processes write to one file (BEGIN IMMEDIATE, taken
by the store's writer, serializes them). The functions that write expect to run inside that
transaction; none commits.

Schema (one row per gtrid, times in unix epoch milliseconds):

    gtrid TEXT PRIMARY KEY
    begun_ms INTEGER      when Begin handed it out (for an unknown gtrid: when first heard of)
    deadline_ms INTEGER   after it, no COMMIT (for an unknown gtrid: the gtrid's own deadline)
    state TEXT            'active' | 'committed' | 'aborted'
    decided_ms INTEGER    NULL while active
    reason TEXT           why ABORTED (or how COMMITTED, for a one-phase commit)
    branches TEXT         JSON list of {resource, bqual, dialect, session_id, transaction_id}
    completed_ms INTEGER  phase 2 acknowledged; NULL until then

and the notes about gtrids (heuristic outcomes, resolve audit records, recovery remarks):

    id INTEGER PRIMARY KEY, gtrid TEXT, at_ms INTEGER, kind TEXT, text TEXT

Version 2 added the notes and an index of incomplete transactions; a version-1 file is
upgraded in place at open (both are `CREATE ... IF NOT EXISTS`). Pruning selects the oldest
rows through the begin-time index (a finished transaction began before it finished).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from . import interface
from .interface import (
    Ack,
    Begun,
    BranchRecord,
    Decision,
    ListQuery,
    Note,
    Proposal,
    Resolution,
    Resolved,
    State,
    TransactionRecord,
)

__all__ = [
    "SCHEMA_VERSION",
    "anything_to_prune",
    "create_schema",
    "decide",
    "get",
    "insert_begun",
    "insert_notes",
    "list_transactions",
    "newest_gtrid",
    "notes",
    "prune",
    "record_acks",
    "resolve",
    "summary",
]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS global_transactions (
    gtrid        TEXT PRIMARY KEY,
    begun_ms     INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'committed', 'aborted')),
    decided_ms   INTEGER,
    reason       TEXT NOT NULL DEFAULT '',
    branches     TEXT NOT NULL DEFAULT '[]',
    completed_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS global_transactions_by_begin ON global_transactions (begun_ms);
CREATE INDEX IF NOT EXISTS global_transactions_by_state ON global_transactions (state, begun_ms);
CREATE INDEX IF NOT EXISTS global_transactions_incomplete
    ON global_transactions (begun_ms, gtrid) WHERE completed_ms IS NULL;
CREATE TABLE IF NOT EXISTS notes (
    id    INTEGER PRIMARY KEY,
    gtrid TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    text  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_by_gtrid ON notes (gtrid, id);
"""

_INSERT_BEGUN = """
INSERT INTO global_transactions (gtrid, begun_ms, deadline_ms, state)
VALUES (?, ?, ?, 'active') ON CONFLICT (gtrid) DO NOTHING
"""
# A decision is one upsert: an unknown gtrid is inserted decided (:first_state, :first_reason:
# aborted, or for a client-made gtrid by its deadline); an active row is decided by the DO
# UPDATE; a decided row is left alone (the WHERE fails, RETURNING yields nothing, and
# _DECISION_OF reads the decision in force).
_DECIDE_COMMIT = """
INSERT INTO global_transactions
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (:gtrid, :now, :deadline, :first_state, :now, :first_reason, :branches)
ON CONFLICT (gtrid) DO UPDATE
   SET state = CASE WHEN :now < deadline_ms THEN 'committed' ELSE 'aborted' END,
       reason = CASE WHEN :now < deadline_ms THEN '' ELSE :late END,
       decided_ms = :now,
       branches = :branches
 WHERE state = 'active'
RETURNING state, reason
"""
_DECIDE_ABORT = """
INSERT INTO global_transactions
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (:gtrid, :now, :deadline, 'aborted', :now, :reason, :branches)
ON CONFLICT (gtrid) DO UPDATE
   SET state = 'aborted',
       reason = :reason,
       decided_ms = :now,
       branches = CASE WHEN :branches = '[]' THEN branches ELSE :branches END
 WHERE state = 'active'
RETURNING state, reason
"""
_DECISION_OF = "SELECT state, reason FROM global_transactions WHERE gtrid = ?"
_ACK_ONE_PHASE = """
UPDATE global_transactions SET state = 'committed', reason = ?, decided_ms = ?
 WHERE gtrid = ? AND state = 'active'
"""
_ACK_COMPLETED = """
UPDATE global_transactions SET completed_ms = ?
 WHERE gtrid = ? AND state <> 'active' AND completed_ms IS NULL
"""
# Finished rows, oldest first by the begin-time index (begun_ms <= completed_ms always).
_PRUNABLE = """
SELECT gtrid FROM global_transactions
 WHERE begun_ms < :cutoff AND completed_ms < :cutoff
 ORDER BY begun_ms LIMIT :limit
"""
_ANYTHING_TO_PRUNE = """
SELECT EXISTS (SELECT 1 FROM global_transactions
                WHERE begun_ms < :cutoff AND completed_ms < :cutoff)
    OR EXISTS (SELECT 1 FROM notes n WHERE at_ms < :cutoff
                  AND NOT EXISTS (SELECT 1 FROM global_transactions g WHERE g.gtrid = n.gtrid))
"""
_PRUNE_ORPHAN_NOTES = """
DELETE FROM notes WHERE id IN (
    SELECT id FROM notes n WHERE at_ms < :cutoff
       AND NOT EXISTS (SELECT 1 FROM global_transactions g WHERE g.gtrid = n.gtrid)
     LIMIT :limit)
"""
_COLUMNS = "gtrid, state, begun_ms, deadline_ms, decided_ms, reason, branches, completed_ms"
_INSERT_NOTE = "INSERT INTO notes (gtrid, at_ms, kind, text) VALUES (?, ?, ?, ?)"


# -- schema ------------------------------------------------------------------------------------


def create_schema(db: sqlite3.Connection) -> None:
    """Create (or upgrade in place to) the current schema."""
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


# -- writes, inside the writer's transaction ---------------------------------------------------


def insert_begun(db: sqlite3.Connection, begun: Sequence[Begun]) -> None:
    """The Begin rule of `interface`: active rows; a gtrid that has a row already keeps it."""
    db.executemany(
        _INSERT_BEGUN,
        [(b.gtrid, b.begun_ms, b.deadline_ms) for b in begun],
    )


def insert_notes(db: sqlite3.Connection, notes: Sequence[Note], now: int) -> None:
    """Keep `notes` (one without a time gets `now`)."""
    db.executemany(_INSERT_NOTE, [(n.gtrid, n.at_ms or now, n.kind, n.text) for n in notes])


def record_acks(db: sqlite3.Connection, acks: Sequence[Ack], now: int) -> None:
    """The Ack rule of `interface`."""
    one_phase = [a.gtrid for a in acks if a.one_phase_commit]
    db.executemany(_ACK_ONE_PHASE, [(interface.ONE_PHASE_COMMIT, now, g) for g in one_phase])
    db.executemany(_ACK_COMPLETED, [(now, a.gtrid) for a in acks])


def decide(db: sqlite3.Connection, proposal: Proposal, now: int) -> Decision:
    """The Commit or Abort rule of `interface`; the decision in force afterwards."""
    params = {
        "gtrid": proposal.gtrid,
        "now": now,
        "deadline": proposal.fallback_deadline_ms,
        "branches": _branches_json(proposal.branches),
    }
    if proposal.presumed_if_late and proposal.fallback_deadline_ms <= now:
        row = db.execute(_DECISION_OF, (proposal.gtrid,)).fetchone()
        if row is None:  # unknown and late: aborted by presumption, nothing to write
            # Not taken: nothing was written, so no decision is counted for it.
            return Decision(proposal.gtrid, State.ABORTED, interface.DEADLINE_PASSED, taken=False)
    if proposal.commit:
        state, reason = interface.unknown_commit_decision(proposal, now)
        params.update(first_state=state.value, first_reason=reason, late=interface.DEADLINE_PASSED)
        rows = db.execute(_DECIDE_COMMIT, params).fetchall()
    else:
        params.update(reason=proposal.reason or interface.ABORTED_BY_CLIENT)
        rows = db.execute(_DECIDE_ABORT, params).fetchall()
    taken = bool(rows)
    if not taken:  # decided before: that decision stands
        rows = db.execute(_DECISION_OF, (proposal.gtrid,)).fetchall()
    ((state, reason),) = rows
    return Decision(proposal.gtrid, State(state), reason, taken)


def resolve(db: sqlite3.Connection, resolution: Resolution, now: int) -> Resolved:
    """The Resolve rule of `interface`, with its audit note."""
    r = resolution
    wanted = State.COMMITTED if r.commit else State.ABORTED
    row = db.execute(
        "SELECT state, reason, branches FROM global_transactions WHERE gtrid = ?", (r.gtrid,)
    ).fetchone()
    previous = State(row[0]) if row else None
    refusal = interface.refusal_of(r, previous, row[1] if row else "")

    if refusal:
        decision = None
        if previous is not None and previous is not State.ACTIVE:
            decision = Decision(r.gtrid, previous, row[1], taken=False)
    elif previous is wanted:
        db.execute("UPDATE global_transactions SET completed_ms = NULL WHERE gtrid = ?", (r.gtrid,))
        decision = Decision(r.gtrid, wanted, row[1], taken=False)
    else:
        reason = f"{interface.RESOLVED_BY_OPERATOR}: {r.reason}"
        merged = interface.merged_branches(_branches(row[2]) if row else [], r.branches)
        db.execute(
            "INSERT INTO global_transactions"
            " (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)"
            " VALUES (:gtrid, :now, :deadline, :state, :now, :reason, :branches)"
            " ON CONFLICT (gtrid) DO UPDATE SET state = :state, decided_ms = :now,"
            " reason = :reason, branches = :branches, completed_ms = NULL",
            {
                "gtrid": r.gtrid,
                "now": now,
                "deadline": r.fallback_deadline_ms,
                "state": wanted.value,
                "reason": reason,
                "branches": _branches_json(merged),
            },
        )
        decision = Decision(r.gtrid, wanted, reason, taken=True)

    text = interface.audit_text(r, previous, refusal)
    db.execute(_INSERT_NOTE, (r.gtrid, now, "resolve", text))
    return Resolved(not refusal, decision, previous, refusal)


def prune(db: sqlite3.Connection, cutoff: int, limit: int) -> int:
    """The Prune rule of `interface`; how many rows it deleted."""
    params = {"cutoff": cutoff, "limit": limit}
    gtrids = [(gtrid,) for (gtrid,) in db.execute(_PRUNABLE, params)]
    db.executemany("DELETE FROM notes WHERE gtrid = ?", gtrids)
    db.executemany("DELETE FROM global_transactions WHERE gtrid = ?", gtrids)
    db.execute(_PRUNE_ORPHAN_NOTES, params)
    return len(gtrids)


def _branches_json(branches: Sequence[BranchRecord]) -> str:
    return json.dumps(
        [
            {
                "resource": b.resource,
                "bqual": b.bqual,
                "dialect": b.dialect,
                "session_id": b.session_id,
                "transaction_id": b.transaction_id,
            }
            for b in branches
        ],
        separators=(",", ":"),
    )


def _branches(text: str) -> list[BranchRecord]:
    return [BranchRecord(**b) for b in json.loads(text)]


def _record(row: tuple[Any, ...]) -> TransactionRecord:
    gtrid, state, begun, deadline, decided, reason, branches, completed = row
    return TransactionRecord(
        gtrid=gtrid,
        state=State(state),
        begun_ms=begun,
        deadline_ms=deadline,
        decided_ms=decided,
        reason=reason,
        branches=tuple(_branches(branches)),
        completed_ms=completed,
    )


# -- reads -------------------------------------------------------------------------------------


def get(db: sqlite3.Connection, gtrid: str) -> TransactionRecord | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM global_transactions WHERE gtrid = ?", (gtrid,))
    found = row.fetchone()
    return _record(found) if found else None


def list_transactions(db: sqlite3.Connection, query: ListQuery) -> list[TransactionRecord]:
    where, params = [], []
    if query.states:
        where.append(f"state IN ({', '.join('?' * len(query.states))})")
        params.extend(sorted(s.value for s in query.states))
    if query.begun_before_ms is not None:
        where.append("begun_ms < ?")
        params.append(query.begun_before_ms)
    if query.incomplete_only:
        where.append("completed_ms IS NULL")
    if query.decided_before_ms is not None:
        where.append("decided_ms < ?")
        params.append(query.decided_before_ms)
    if query.after is not None:
        where.append("(begun_ms, gtrid) > (?, ?)")
        params.extend(query.after)
    if query.deadline_before_ms is not None:
        where.append("deadline_ms < ?")
        params.append(query.deadline_before_ms)
    sql = f"SELECT {_COLUMNS} FROM global_transactions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY begun_ms, gtrid LIMIT ?"
    params.append(query.limit)
    return [_record(row) for row in db.execute(sql, params).fetchall()]


def notes(db: sqlite3.Connection, gtrid: str) -> list[Note]:
    rows = db.execute(
        "SELECT gtrid, at_ms, kind, text FROM notes WHERE gtrid = ? ORDER BY id", (gtrid,)
    ).fetchall()
    return [Note(*row) for row in rows]


def newest_gtrid(db: sqlite3.Connection) -> str | None:
    row = db.execute(
        "SELECT gtrid FROM global_transactions ORDER BY begun_ms DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def summary(db: sqlite3.Connection, *, incomplete_only: bool) -> dict[tuple[State, bool], int]:
    # Incomplete only: the partial index of incomplete rows is all that is read (left to
    # itself, the planner walks the whole table through the state index, for the GROUP BY).
    where = (
        " INDEXED BY global_transactions_incomplete WHERE completed_ms IS NULL"
        if incomplete_only
        else ""
    )
    rows = db.execute(
        "SELECT state, completed_ms IS NOT NULL, COUNT(*) FROM global_transactions"
        f"{where} GROUP BY 1, 2"
    ).fetchall()
    return {(State(state), bool(completed)): count for state, completed, count in rows}


def anything_to_prune(db: sqlite3.Connection, cutoff: int) -> bool:
    """Whether `prune` with this cutoff would delete anything (asked on a reader first, so
    that the writer is not bothered when there is nothing to do)."""
    (due,) = db.execute(_ANYTHING_TO_PRUNE, {"cutoff": cutoff}).fetchone()
    return bool(due)
