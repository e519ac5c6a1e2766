"""What a pass reads before it plans: each resource's prepared xids, and the log's records.

A resource is scanned with the client's `ops.recover` (the same statement the stubs' branch
layer uses), only once this coordinator's cluster claim on it is confirmed in this pass
(`twostep.coordinator._claim`): a claim held by another coordinator is a scan error, and
nothing on that resource is judged. Of what it lists, only the xids of this cluster are kept;
on PostgreSQL each one's transaction id (xid8) too, the evidence for a heuristic check once
the branch is gone (`twostep.coordinator._inspect`), and the server's prepared transactions
as a whole for the metrics (`_inspect.pg_prepared_summary`). Scans of several resources run at
once, each in its resource's lane (`lanes`): one that does not answer within the scan's
patience is a scan error ("stuck"), and holds up no other one.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .. import _inspect
from .._claim import ClaimConflict, ClusterClaims
from .._inspect import PgPrepared
from .._registry import Resource
from ..log import DecisionLog, ListQuery, State, TransactionRecord
from .lanes import Lanes, Stuck
from .plan import Listing, is_ours

__all__ = ["Scanner", "decided_incomplete", "records_of"]

_PAGE = 1000  # decided transactions read from the log at a time


class Scanner:
    """Lists the prepared xids of this cluster on the registered resources."""

    def __init__(self, claims: ClusterClaims, cluster_id: str, lanes: Lanes):
        self._claims = claims
        self._cluster = cluster_id
        self._lanes = lanes

    def scan(
        self, resources: Sequence[Resource], patience: float
    ) -> tuple[dict[str, Listing], dict[str, str], dict[str, PgPrepared]]:
        """Scan `resources` in parallel, waiting at most `patience` seconds: the listing of
        each one scanned, why each other one could not be (the driver's message, its password
        masked; "stuck: ..." for one that did not answer in time), and each PostgreSQL one's
        prepared transactions as a whole."""
        futures, failed = {}, {}
        for resource in resources:
            try:
                futures[resource.name] = self._lanes.submit(resource.name, self._scan, resource)
            except Stuck as exc:
                failed[resource.name] = f"stuck: {exc}"
        concurrent.futures.wait(futures.values(), timeout=patience)
        listings, summaries = {}, {}
        for resource in resources:
            future = futures.get(resource.name)
            if future is None:
                continue
            if not future.done():
                failed[resource.name] = f"stuck: no answer within {patience:.1f} s"
                continue
            try:
                listings[resource.name], summary = future.result()
            except Exception as exc:
                failed[resource.name] = resource.redact(exc)
                continue
            if summary is not None:
                summaries[resource.name] = summary
        return listings, failed, summaries

    def _scan(self, resource: Resource) -> tuple[Listing, PgPrepared | None]:
        why = self._claims.check(resource)
        if why:
            raise ClaimConflict(why)
        session = resource.connection.acquire()
        try:
            xids = frozenset(x for x in resource.ops.recover(session) if is_ours(x, self._cluster))
            txids, summary = {}, None
            if resource.dialect == "postgresql":
                summary = _inspect.pg_prepared_summary(resource, session)
            if resource.dialect == "postgresql" and xids:
                for raw in _inspect.prepared_xids(resource, session):
                    if raw.xid in xids and raw.pg_txid:
                        txids[raw.xid] = raw.pg_txid
        except BaseException:
            resource.connection.release(session, discard=True)
            raise
        resource.connection.release(session)
        return Listing(resource.name, xids, txids), summary


def decided_incomplete(
    decision_log: DecisionLog, *, decided_before_ms: int, only: str | None, stop: Callable[[], bool]
) -> list[TransactionRecord]:
    """The decided transactions whose phase 2 is not acknowledged, decided before
    `decided_before_ms`, oldest first (read a page at a time until `stop()`); with `only`,
    that gtrid's row alone if it is decided (acknowledged or not)."""
    if only is not None:
        record = decision_log.get(only)
        return [record] if record is not None and record.state is not State.ACTIVE else []
    query = ListQuery(
        states=frozenset({State.COMMITTED, State.ABORTED}),
        incomplete_only=True,
        decided_before_ms=decided_before_ms,
        limit=_PAGE,
    )
    records: list[TransactionRecord] = []
    while True:
        page = decision_log.list_transactions(query)
        records += page
        if len(page) < _PAGE or stop():
            return records
        last = page[-1]
        query = replace(query, after=(last.begun_ms, last.gtrid))


def records_of(decision_log: DecisionLog, gtrids: Iterable[str]) -> dict[str, TransactionRecord]:
    """The log's rows of `gtrids`; a gtrid the log has no row of is left out."""
    found = {}
    for gtrid in gtrids:
        record = decision_log.get(gtrid)
        if record is not None:
            found[gtrid] = record
    return found
