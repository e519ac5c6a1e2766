"""What a database can tell about prepared branches beyond the branch operations.

Recovery finishes and lists branches only through the client's operations
(`twostep.client.tpc.operations`: commit_prepared, rollback_prepared, is_prepared, recover), never a
second copy of them. The queries here never finish a branch; they answer what those do not:

`prepared_xids(resource, session)`
    Every prepared xid the resource shows, foreign ones included, as the database shows it
    (for ScanResource), and on PostgreSQL each one's transaction id as a 64-bit xid8, the
    evidence `BranchOps.ended_as` needs later (for orphans, whose client never reported it).
`pg_prepared_summary(resource, session)`
    PostgreSQL: the server's prepared transactions as a whole, for the metrics: how many of
    max_prepared_transactions are taken, and how old the oldest is, in seconds and in
    transaction ids (a prepared transaction holds the vacuum horizon back until it ends).
`session_holds_transaction(session, thread_id)` and `kill_session(session, thread_id)`
    (MySQL/MariaDB) A prepared branch attached to a live session cannot be finished from
    another one (XAER_NOTA while XA RECOVER lists it). The session the client reported is
    confirmed in `information_schema.INNODB_TRX` (which does not show xids), and only then
    may recovery KILL it, so that the branch detaches and can be finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twostep.client.tpc import FORMAT_ID, Xid, translate_driver_errors

from ._registry import Resource

__all__ = [
    "PgPrepared",
    "RawXid",
    "kill_session",
    "pg_prepared_summary",
    "prepared_xids",
    "session_holds_transaction",
]

_MAX_THREAD_ID = 2**63 - 1

# pg_prepared_xacts.transaction is a 32-bit xid; pg_xact_status() wants the 64-bit xid8. The
# snapshot's xmax (latest completed xid + 1, not the next xid: a prepared xid may be above it,
# measured) is a 64-bit xid within 2^31 of every xid still in the system, so the prepared xid
# is xmax plus the signed 32-bit distance between their low halves.
_PG_PREPARED = """
SELECT p.gid,
       x.v + ((p.transaction::text::bigint - (x.v & 4294967295) + 2147483648) & 4294967295)
           - 2147483648
  FROM pg_prepared_xacts p,
       LATERAL (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS v) x
 WHERE p.database = current_database()
 ORDER BY p.prepared
"""

# Server-wide, like max_prepared_transactions itself: every database's prepared transactions
# take a slot, and pin the horizon. clock_timestamp(): now() would be the session's
# transaction start. age(xid) counts from the next transaction id, as VACUUM does.
_PG_PREPARED_SUMMARY = """
SELECT current_setting('max_prepared_transactions')::int,
       count(*),
       COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(prepared)), 0)::float8,
       COALESCE(max(age(transaction)), 0)
  FROM pg_prepared_xacts
"""


@dataclass(frozen=True)
class PgPrepared:
    """PostgreSQL: the server's prepared transactions (every database, every user of two-phase
    commit) as one query saw them."""

    max_prepared: int  # max_prepared_transactions
    prepared: int  # how many are prepared now
    oldest_age_s: float  # since the oldest was prepared (pg_prepared_xacts.prepared); 0: none
    oldest_xid_age: int  # age(transaction) of the oldest, in transaction ids; 0: none


def pg_prepared_summary(resource: Resource, session: Any) -> PgPrepared:
    """PostgreSQL only: the server's prepared transactions as a whole (`PgPrepared`)."""
    with translate_driver_errors(resource.name):
        max_prepared, prepared, age_s, xid_age = session.execute(_PG_PREPARED_SUMMARY).fetchone()
    return PgPrepared(int(max_prepared), int(prepared), float(age_s), int(xid_age))


@dataclass(frozen=True)
class RawXid:
    """One prepared xid as a database lists it."""

    raw: str  # the PostgreSQL gid, or MySQL's `'gtrid','bqual',formatID` (hex if unprintable)
    xid: Xid | None  # set when it is a twostep branch (of any cluster)
    pg_txid: int | None = None  # PostgreSQL: its transaction id (xid8)


def prepared_xids(resource: Resource, session: Any) -> list[RawXid]:
    """Every prepared xid on the resource (PostgreSQL: in its database; MySQL: server-wide)."""
    with translate_driver_errors(resource.name):
        if resource.dialect == "postgresql":
            rows = session.execute(_PG_PREPARED).fetchall()
            return [RawXid(gid, Xid.from_pg_gid(gid), int(txid) or None) for gid, txid in rows]
        with session.cursor() as cur:
            cur.execute("XA RECOVER")
            rows = cur.fetchall()
    return [_mysql_raw(*row) for row in rows]


def _mysql_raw(format_id: int, gtrid_length: int, bqual_length: int, data: Any) -> RawXid:
    raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
    gtrid, bqual = raw[:gtrid_length], raw[gtrid_length : gtrid_length + bqual_length]
    printable = all(32 <= b < 127 and b not in b"'\\" for b in raw)
    if printable:
        shown = f"'{gtrid.decode()}','{bqual.decode()}',{format_id}"
    else:
        shown = f"X'{gtrid.hex()}',X'{bqual.hex()}',{format_id}"
    xid = None
    if format_id == FORMAT_ID:
        xid = Xid.from_mysql_recover(format_id, gtrid_length, bqual_length, raw)
    return RawXid(shown, xid)


def _thread_id(thread_id: object) -> int:
    if isinstance(thread_id, bool) or not isinstance(thread_id, int):
        raise ValueError(f"a session id is an integer, not {type(thread_id).__name__}")
    if not 0 < thread_id <= _MAX_THREAD_ID:
        raise ValueError(f"session id {thread_id} out of range")
    return thread_id


def session_holds_transaction(session: Any, thread_id: int) -> bool:
    """MySQL/MariaDB: whether session `thread_id` has an InnoDB transaction open right now."""
    with translate_driver_errors(), session.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %s",
            (_thread_id(thread_id),),
        )
        (count,) = cur.fetchone()
    return bool(count)


def kill_session(session: Any, thread_id: int) -> bool:
    """MySQL/MariaDB: KILL CONNECTION `thread_id`; False if no such session exists (any more).

    Never the calling session itself. KILL returns before the session has ended.
    """
    victim = _thread_id(thread_id)
    if victim == session.thread_id():
        raise ValueError("refusing to KILL the recovery session itself")
    with translate_driver_errors(), session.cursor() as cur:
        try:
            # PyMySQL binds on the client: the validated integer becomes a plain number literal.
            cur.execute("KILL CONNECTION %s", (victim,))
        except Exception as exc:
            if getattr(exc, "args", (None,))[0] == 1094:  # ER_NO_SUCH_THREAD
                return False
            raise
    return True
