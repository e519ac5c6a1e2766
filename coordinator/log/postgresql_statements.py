"""Every statement the PostgreSQL store runs: its schema, the rules of `interface` as statements
inside the writer's one transaction, the reads, and the recovery work locks.

The rules, as in the embedded store: for each decision one INSERT .. ON CONFLICT (gtrid) DO
UPDATE .. WHERE state = 'active' RETURNING, which inserts an unknown gtrid decided or decides
an active row, and a read-back of the row when it was decided already. The first decision
wins through the primary key, also between replicas writing at once: ON CONFLICT waits for
the other transaction that holds the row and then sees its outcome (READ COMMITTED). A batch
sends its decisions in one round trip (pipeline mode) in gtrid order, so that two replicas'
batches lock rows in one order. The functions that write expect to run inside that
transaction; none commits. A resolution reads its row FOR UPDATE first (and retries an insert
a concurrent decision beat: `RaceLost`).

Schema `twostep` (one row per gtrid, times in unix epoch milliseconds, as in
`sqlite_statements`): `global_transactions` (branches as jsonb), `notes`, and `identity`: the
cluster id the log belongs to and a random id of the store itself (which names the cluster
claim replicas of this store share, `twostep.coordinator._claim`). Creating or upgrading the
schema is serialized by a transaction advisory lock, so replicas may start at once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

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
    "RaceLost",
    "anything_to_prune",
    "create_schema",
    "decide",
    "get",
    "identity",
    "insert_begun",
    "insert_notes",
    "list_transactions",
    "lock_work",
    "newest_gtrid",
    "notes",
    "prune",
    "record_acks",
    "resolve",
    "summary",
    "unlock_work",
]


def _key(name: str) -> int:
    """A 32-bit advisory lock key (signed) from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


_SCHEMA_LOCK = _key("twostep.log.schema")
#: Recovery's work locks are (this, hashtext(gtrid)): two-key advisory locks never collide
#: with the one-key (bigint) locks of the cluster claim.
_WORK_LOCK_SPACE = _key("twostep.log.recovery")

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS twostep;
CREATE TABLE IF NOT EXISTS twostep.global_transactions (
    gtrid        text PRIMARY KEY,
    begun_ms     bigint NOT NULL,
    deadline_ms  bigint NOT NULL,
    state        text NOT NULL CHECK (state IN ('active', 'committed', 'aborted')),
    decided_ms   bigint,
    reason       text NOT NULL DEFAULT '',
    branches     jsonb NOT NULL DEFAULT '[]',
    completed_ms bigint
);
CREATE INDEX IF NOT EXISTS global_transactions_by_begin
    ON twostep.global_transactions (begun_ms, gtrid);
CREATE INDEX IF NOT EXISTS global_transactions_by_state
    ON twostep.global_transactions (state, begun_ms);
CREATE INDEX IF NOT EXISTS global_transactions_incomplete
    ON twostep.global_transactions (begun_ms, gtrid) WHERE completed_ms IS NULL;
CREATE TABLE IF NOT EXISTS twostep.notes (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gtrid text NOT NULL,
    at_ms bigint NOT NULL,
    kind  text NOT NULL,
    text  text NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_by_gtrid ON twostep.notes (gtrid, id);
CREATE TABLE IF NOT EXISTS twostep.identity (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"""

_INSERT_BEGUN = """
INSERT INTO twostep.global_transactions (gtrid, begun_ms, deadline_ms, state)
SELECT g, b, d, 'active' FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u(g, b, d)
 ORDER BY g
ON CONFLICT (gtrid) DO NOTHING
"""
_DECIDE_COMMIT = """
INSERT INTO twostep.global_transactions AS t
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (%(gtrid)s, %(now)s, %(deadline)s, %(first_state)s, %(now)s, %(first_reason)s,
        %(branches)s)
ON CONFLICT (gtrid) DO UPDATE
   SET state = CASE WHEN %(now)s < t.deadline_ms THEN 'committed' ELSE 'aborted' END,
       reason = CASE WHEN %(now)s < t.deadline_ms THEN '' ELSE %(late)s END,
       decided_ms = %(now)s,
       branches = excluded.branches
 WHERE t.state = 'active'
RETURNING state, reason
"""
_DECIDE_ABORT = """
INSERT INTO twostep.global_transactions AS t
       (gtrid, begun_ms, deadline_ms, state, decided_ms, reason, branches)
VALUES (%(gtrid)s, %(now)s, %(deadline)s, 'aborted', %(now)s, %(reason)s, %(branches)s)
ON CONFLICT (gtrid) DO UPDATE
   SET state = 'aborted',
       reason = excluded.reason,
       decided_ms = %(now)s,
       branches = CASE WHEN excluded.branches = '[]'::jsonb THEN t.branches
                       ELSE excluded.branches END
 WHERE t.state = 'active'
RETURNING state, reason
"""
_DECISIONS_OF = "SELECT gtrid, state, reason FROM twostep.global_transactions WHERE gtrid = ANY(%s)"
_ACK_ONE_PHASE = """
UPDATE twostep.global_transactions SET state = 'committed', reason = %s, decided_ms = %s
 WHERE gtrid = ANY(%s) AND state = 'active'
"""
_ACK_COMPLETED = """
UPDATE twostep.global_transactions SET completed_ms = %s
 WHERE gtrid = ANY(%s) AND state <> 'active' AND completed_ms IS NULL
"""
_INSERT_NOTES = """
INSERT INTO twostep.notes (gtrid, at_ms, kind, text)
SELECT g, a, k, t FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[])
       WITH ORDINALITY AS u(g, a, k, t, n)
 ORDER BY n
"""
# Finished rows, oldest first; rows another replica is deleting right now are skipped.
_PRUNE = """
WITH gone AS (
    DELETE FROM twostep.global_transactions WHERE gtrid IN (
        SELECT gtrid FROM twostep.global_transactions
         WHERE begun_ms < %(cutoff)s AND completed_ms < %(cutoff)s
         ORDER BY begun_ms LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING gtrid
), their_notes AS (
    DELETE FROM twostep.notes WHERE gtrid IN (SELECT gtrid FROM gone)
)
SELECT count(*) FROM gone
"""
_PRUNE_ORPHAN_NOTES = """
DELETE FROM twostep.notes WHERE id IN (
    SELECT id FROM twostep.notes n WHERE at_ms < %(cutoff)s
       AND NOT EXISTS (SELECT 1 FROM twostep.global_transactions g WHERE g.gtrid = n.gtrid)
     LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""
_ANYTHING_TO_PRUNE = """
SELECT EXISTS (SELECT 1 FROM twostep.global_transactions
                WHERE begun_ms < %(cutoff)s AND completed_ms < %(cutoff)s)
    OR EXISTS (SELECT 1 FROM twostep.notes n WHERE at_ms < %(cutoff)s
                  AND NOT EXISTS (SELECT 1 FROM twostep.global_transactions g
                                   WHERE g.gtrid = n.gtrid))
"""
_COLUMNS = "gtrid, state, begun_ms, deadline_ms, decided_ms, reason, branches, completed_ms"


class RaceLost(Exception):
    """A resolution's insert met a row a concurrent decision inserted: read it and retry."""


# -- schema and identity -----------------------------------------------------------------------


def create_schema(db: psycopg.Connection[Any]) -> None:
    """Create the schema if missing (serialized between replicas starting at once)."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        db.execute(_SCHEMA)


def identity(db: psycopg.Connection[Any], cluster_id: str) -> tuple[str, str]:
    """(the cluster id the log belongs to, the store's id): recorded by the first coordinator
    that opens the log (`cluster_id` and a new random id), read by every later one."""
    with db.transaction():
        db.execute(
            "INSERT INTO twostep.identity (key, value) VALUES ('cluster_id', %s), ('store_id', %s)"
            " ON CONFLICT (key) DO NOTHING",
            (cluster_id, secrets.token_hex(8)),
        )
        rows = dict(db.execute("SELECT key, value FROM twostep.identity").fetchall())
    return rows["cluster_id"], rows["store_id"]


# -- writes, inside the writer's transaction ---------------------------------------------------


def insert_begun(db: psycopg.Connection[Any], begun: Sequence[Begun]) -> None:
    """The Begin rule of `interface`: active rows; a gtrid that has a row already keeps it."""
    db.execute(
        _INSERT_BEGUN,
        ([b.gtrid for b in begun], [b.begun_ms for b in begun], [b.deadline_ms for b in begun]),
    )


def insert_notes(db: psycopg.Connection[Any], notes: Sequence[Note], now: int) -> None:
    """Keep `notes` (one without a time gets `now`), in order."""
    db.execute(
        _INSERT_NOTES,
        (
            [n.gtrid for n in notes],
            [n.at_ms or now for n in notes],
            [n.kind for n in notes],
            [n.text for n in notes],
        ),
    )


def record_acks(db: psycopg.Connection[Any], acks: Sequence[Ack], now: int) -> None:
    """The Ack rule of `interface`."""
    one_phase = sorted(a.gtrid for a in acks if a.one_phase_commit)
    if one_phase:
        db.execute(_ACK_ONE_PHASE, (interface.ONE_PHASE_COMMIT, now, one_phase))
    db.execute(_ACK_COMPLETED, (now, sorted({a.gtrid for a in acks})))


def decide(db: psycopg.Connection[Any], proposals: Sequence[Proposal], now: int) -> list[Decision]:
    """The Commit or Abort rule of `interface` for each proposal (in gtrid order, one round
    trip); the decisions in force afterwards, in the proposals' order."""
    late = {p.gtrid for p in proposals if p.presumed_if_late and p.fallback_deadline_ms <= now}
    rows = db.execute(_DECISIONS_OF, (sorted(late),)).fetchall() if late else []
    known = {gtrid for gtrid, _, _ in rows}
    presumed = {  # unknown and late: aborted by presumption, nothing to write (`interface`)
        i for i, p in enumerate(proposals) if p.gtrid in late and p.gtrid not in known
    }
    order = sorted(
        (i for i in range(len(proposals)) if i not in presumed), key=lambda i: proposals[i].gtrid
    )
    with db.pipeline():
        cursors = {i: db.execute(*_decision_statement(proposals[i], now)) for i in order}
    answers: dict[int, tuple[str, str]] = {}
    for i, cursor in cursors.items():
        rows = cursor.fetchall()
        if rows:
            answers[i] = rows[0]
    taken = set(answers)  # the statement wrote the row: this call took the decision
    answers.update({i: (State.ABORTED.value, interface.DEADLINE_PASSED) for i in presumed})
    missing = [i for i in range(len(proposals)) if i not in answers]
    if missing:  # decided before: that decision stands
        gtrids = [proposals[i].gtrid for i in missing]
        known = {g: (s, r) for g, s, r in db.execute(_DECISIONS_OF, (gtrids,)).fetchall()}
        answers.update({i: known[proposals[i].gtrid] for i in missing})
    return [
        Decision(p.gtrid, State(answers[i][0]), answers[i][1], i in taken)
        for i, p in enumerate(proposals)
    ]


def _decision_statement(proposal: Proposal, now: int) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {
        "gtrid": proposal.gtrid,
        "now": now,
        "deadline": proposal.fallback_deadline_ms,
        "branches": Jsonb([asdict(b) for b in proposal.branches]),
    }
    if not proposal.commit:
        params["reason"] = proposal.reason or interface.ABORTED_BY_CLIENT
        return _DECIDE_ABORT, params
    state, reason = interface.unknown_commit_decision(proposal, now)
    params.update(first_state=state.value, first_reason=reason, late=interface.DEADLINE_PASSED)
    return _DECIDE_COMMIT, params


def resolve(db: psycopg.Connection[Any], resolution: Resolution, now: int) -> Resolved:
    """The Resolve rule of `interface`, with its audit note. Raises `RaceLost` when a decision
    inserted the row meanwhile (the caller retries in a new statement, which sees it)."""
    r = resolution
    wanted = State.COMMITTED if r.commit else State.ABORTED
    row = db.execute(
        "SELECT state, reason, branches FROM twostep.global_transactions WHERE gtrid = %s"
        " FOR UPDATE",
        (r.gtrid,),
    ).fetchone()
    previous = State(row[0]) if row else None
    refusal = interface.refusal_of(r, previous, row[1] if row else "")
    if refusal:
        decision = None
        if previous is not None and previous is not State.ACTIVE:
            decision = Decision(r.gtrid, previous, row[1], taken=False)  # type: ignore[index]
    elif previous is wanted:
        db.execute(
            "UPDATE twostep.global_transactions SET completed_ms = NULL WHERE gtrid = %s",
            (r.gtrid,),
        )
        decision = Decision(r.gtrid, wanted, row[1], taken=False)  # type: ignore[index]
    else:
        reason = f"{interface.RESOLVED_BY_OPERATOR}: {r.reason}"
        merged = interface.merged_branches(_branches(row[2]) if row else [], r.branches)
        params = (wanted.value, now, reason, Jsonb([asdict(b) for b in merged]), r.gtrid)
        if row:
            db.execute(
                "UPDATE twostep.global_transactions SET state = %s, decided_ms = %s,"
                " reason = %s, branches = %s, completed_ms = NULL WHERE gtrid = %s",
                params,
            )
        else:
            inserted = db.execute(
                "INSERT INTO twostep.global_transactions"
                " (state, decided_ms, reason, branches, gtrid, begun_ms, deadline_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gtrid) DO NOTHING"
                " RETURNING gtrid",
                (*params, now, r.fallback_deadline_ms),
            ).fetchone()
            if inserted is None:
                raise RaceLost(r.gtrid)
        decision = Decision(r.gtrid, wanted, reason, taken=True)
    db.execute(
        "INSERT INTO twostep.notes (gtrid, at_ms, kind, text) VALUES (%s, %s, 'resolve', %s)",
        (r.gtrid, now, interface.audit_text(r, previous, refusal)),
    )
    return Resolved(not refusal, decision, previous, refusal)


def prune(db: psycopg.Connection[Any], cutoff: int, limit: int) -> int:
    """The Prune rule of `interface`; how many rows it deleted."""
    params = {"cutoff": cutoff, "limit": limit}
    (deleted,) = db.execute(_PRUNE, params).fetchone()  # type: ignore[misc]
    db.execute(_PRUNE_ORPHAN_NOTES, params)
    return int(deleted)


# -- recovery's work locks (session advisory locks, on a connection of their own) --------------


def lock_work(db: psycopg.Connection[Any], gtrids: Sequence[str]) -> set[str]:
    """Of `gtrids`, those whose work lock this session took (or holds): the ones no other
    replica is working on. (A transaction another replica finished meanwhile may be among
    them: finishing a branch again is harmless, and a completed transaction's branch that
    turned up prepared later must still be finished.)"""
    rows = db.execute(
        "SELECT g FROM unnest(%s::text[]) AS g WHERE pg_try_advisory_lock(%s, hashtext(g))",
        (list(gtrids), _WORK_LOCK_SPACE),
    ).fetchall()
    return {g for (g,) in rows}


def unlock_work(db: psycopg.Connection[Any]) -> None:
    """Release every work lock of this session (the connection holds nothing else)."""
    db.execute("SELECT pg_advisory_unlock_all()")


# -- reads -------------------------------------------------------------------------------------


def _branches(value: list[dict[str, Any]]) -> list[BranchRecord]:
    return [BranchRecord(**b) for b in value]


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


def get(db: psycopg.Connection[Any], gtrid: str) -> TransactionRecord | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM twostep.global_transactions WHERE gtrid = %s", (gtrid,)
    ).fetchone()
    return _record(row) if row else None


def list_transactions(db: psycopg.Connection[Any], query: ListQuery) -> list[TransactionRecord]:
    where: list[sql.Composable] = []
    params: list[Any] = []
    if query.states:
        where.append(sql.SQL("state = ANY(%s)"))
        params.append(sorted(s.value for s in query.states))
    if query.begun_before_ms is not None:
        where.append(sql.SQL("begun_ms < %s"))
        params.append(query.begun_before_ms)
    if query.incomplete_only:
        where.append(sql.SQL("completed_ms IS NULL"))
    if query.decided_before_ms is not None:
        where.append(sql.SQL("decided_ms < %s"))
        params.append(query.decided_before_ms)
    if query.after is not None:
        where.append(sql.SQL("(begun_ms, gtrid) > (%s, %s)"))
        params.extend(query.after)
    if query.deadline_before_ms is not None:
        where.append(sql.SQL("deadline_ms < %s"))
        params.append(query.deadline_before_ms)
    statement = sql.SQL(f"SELECT {_COLUMNS} FROM twostep.global_transactions")
    if where:
        statement += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    statement += sql.SQL(" ORDER BY begun_ms, gtrid LIMIT %s")
    params.append(query.limit)
    return [_record(row) for row in db.execute(statement, params).fetchall()]


def notes(db: psycopg.Connection[Any], gtrid: str) -> list[Note]:
    rows = db.execute(
        "SELECT gtrid, at_ms, kind, text FROM twostep.notes WHERE gtrid = %s ORDER BY id",
        (gtrid,),
    ).fetchall()
    return [Note(*row) for row in rows]


def newest_gtrid(db: psycopg.Connection[Any]) -> str | None:
    row = db.execute(
        "SELECT gtrid FROM twostep.global_transactions ORDER BY begun_ms DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def summary(db: psycopg.Connection[Any], *, incomplete_only: bool) -> dict[tuple[State, bool], int]:
    # Incomplete only: what the partial index of incomplete rows holds, not every kept row.
    where = " WHERE completed_ms IS NULL" if incomplete_only else ""
    rows = db.execute(
        "SELECT state, completed_ms IS NOT NULL, count(*) FROM twostep.global_transactions"
        f"{where} GROUP BY 1, 2"
    ).fetchall()
    return {(State(state), bool(completed)): count for state, completed, count in rows}


def anything_to_prune(db: psycopg.Connection[Any], cutoff: int) -> bool:
    """Whether `prune` with this cutoff would delete anything (asked on a reader first)."""
    (due,) = db.execute(_ANYTHING_TO_PRUNE, {"cutoff": cutoff}).fetchone()  # type: ignore[misc]
    return bool(due)
