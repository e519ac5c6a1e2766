"""The coordinator's Prometheus metrics: every name it exports, and the HTTP endpoint.

Every metric is named here, with the prefix `twostep_` (`PREFIX`); deploy/grafana and
deploy/prometheus use these names and a test checks they are the ones exported. The endpoint
(`metrics_listen`, off by default) serves `GET /metrics` in Prometheus' text format with
`prometheus-client`, from a registry of this coordinator's own (no process-wide state).

What is measured where, so that a scrape costs nothing but formatting:
- decisions (`DECISIONS`): counted where a decision is taken, once each (`Decision.taken`):
  the Commit and Abort calls, and recovery's ABORTs of orphans and expired transactions.
  One-phase commits the client acknowledges and an operator's Resolve are not decisions here.
- Commit latency (`COMMIT_SECONDS`): the Commit call's handling time, the decision's fsync
  included (the client's network round trip is not).
- transactions by state, in doubt, blocked (`TRANSACTIONS`, `IN_DOUBT`, `BLOCKED`): after
  every recovery pass, from the log's incomplete rows and the pass's orphans (the states of
  `twostep.client.txn_states`; finished ones are not gauges: see `DECISIONS`).
- per resource (`RESOURCE_UP`, `PREPARED_BRANCHES`, `OLDEST_PREPARED`, `PG_*`): from each
  recovery scan, also at most one recovery interval old.
- recovery actions and heuristic outcomes (`RECOVERY_ACTIONS`, `HEURISTIC_OUTCOMES`): from
  the reports of passes that acted (not dry runs).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from twostep.client.txn_states import IN_DOUBT, TxnState

from .log import DEADLINE_PASSED, RESOLVED_BY_OPERATOR, UNKNOWN_TRANSACTION, Decision, State
from .recovery import EXPIRED_REASON, RECOVERY_ABORT_REASON

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ._txn_view import Counts
    from .recovery import Report

__all__ = ["EXPORTED", "PREFIX", "Metrics", "reason_class"]

#: Every metric name starts with this.
PREFIX = "twostep_"

DECISIONS = "twostep_decisions"  # counter (exported as _total): outcome, reason
COMMIT_SECONDS = "twostep_commit_seconds"  # histogram (_bucket, _sum, _count)
TRANSACTIONS = "twostep_transactions"  # gauge: state (the unfinished states)
IN_DOUBT_TXNS = "twostep_in_doubt_transactions"  # gauge
BLOCKED_TXNS = "twostep_blocked_transactions"  # gauge
RECOVERY_PASS_TIME = "twostep_recovery_last_pass_timestamp_seconds"  # gauge
RESOURCE_UP = "twostep_resource_up"  # gauge: resource
PREPARED_BRANCHES = "twostep_prepared_branches"  # gauge: resource
OLDEST_PREPARED = "twostep_oldest_prepared_branch_age_seconds"  # gauge: resource
PG_MAX_PREPARED = "twostep_pg_max_prepared_transactions"  # gauge: resource
PG_PREPARED = "twostep_pg_prepared_transactions"  # gauge: resource
PG_HEADROOM = "twostep_pg_prepared_transactions_headroom"  # gauge: resource
PG_OLDEST_AGE = "twostep_pg_oldest_prepared_transaction_age_seconds"  # gauge: resource
PG_OLDEST_XID_AGE = "twostep_pg_oldest_prepared_xid_age"  # gauge: resource
RECOVERY_ACTIONS = "twostep_recovery_actions"  # counter (_total): action, result
HEURISTIC_OUTCOMES = "twostep_heuristic_outcomes"  # counter (_total): resource

#: The sample names a scrape can show (a counter's `_total`, a histogram's series).
EXPORTED = frozenset(
    {
        f"{DECISIONS}_total",
        f"{COMMIT_SECONDS}_bucket",
        f"{COMMIT_SECONDS}_sum",
        f"{COMMIT_SECONDS}_count",
        TRANSACTIONS,
        IN_DOUBT_TXNS,
        BLOCKED_TXNS,
        RECOVERY_PASS_TIME,
        RESOURCE_UP,
        PREPARED_BRANCHES,
        OLDEST_PREPARED,
        PG_MAX_PREPARED,
        PG_PREPARED,
        PG_HEADROOM,
        PG_OLDEST_AGE,
        PG_OLDEST_XID_AGE,
        f"{RECOVERY_ACTIONS}_total",
        f"{HEURISTIC_OUTCOMES}_total",
    }
)

#: A decision's reason as a label: a few fixed words (a client's own Abort reason is free
#: text, and a label must not have unbounded values).
_REASONS = {
    DEADLINE_PASSED: "deadline",
    UNKNOWN_TRANSACTION: "unknown",
    RECOVERY_ABORT_REASON: "orphan",
    EXPIRED_REASON: "expired",
}
#: The unfinished states, each a gauge series (finished ones only grow: `DECISIONS` counts).
_UNFINISHED = (TxnState.ACTIVE, *sorted(IN_DOUBT))
#: Commit handling time: an fsync'd group commit takes milliseconds; a slow disk, seconds.
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def reason_class(decision: Decision) -> str:
    """The `reason` label of a decision: "" for a COMMIT, else deadline, unknown, orphan,
    expired, operator or client (an Abort's own reason)."""
    if decision.state is State.COMMITTED:
        return ""
    if decision.reason.startswith(RESOLVED_BY_OPERATOR):
        return "operator"
    return _REASONS.get(decision.reason, "client")


class Metrics:
    """One coordinator's metrics (see the module docstring); safe to use from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
        self.decisions = Counter(
            DECISIONS,
            "Decisions taken, by outcome (commit, abort) and reason class (abort: client, "
            "deadline, unknown, orphan, expired)",
            ["outcome", "reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            COMMIT_SECONDS,
            "Time the coordinator took to answer a Commit call (its decisions durable), seconds",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self._transactions = Gauge(
            TRANSACTIONS,
            "Unfinished transactions by state (active, orphaned, committing, aborting), as of "
            "the last recovery pass",
            ["state"],
            registry=r,
        )
        self._in_doubt = Gauge(
            IN_DOUBT_TXNS,
            "Transactions in doubt (orphaned, committing or aborting: a branch may still be "
            "prepared, holding its locks), as of the last recovery pass",
            registry=r,
        )
        self._blocked = Gauge(
            BLOCKED_TXNS,
            "In-doubt transactions the last recovery pass could not finish a branch of",
            registry=r,
        )
        self._pass_time = Gauge(
            RECOVERY_PASS_TIME, "When the last recovery pass ended (unix time)", registry=r
        )
        per_resource = ["resource"]
        self._up = Gauge(
            RESOURCE_UP,
            "1 if the last recovery scan of the resource succeeded",
            per_resource,
            registry=r,
        )
        self._prepared = Gauge(
            PREPARED_BRANCHES,
            "This coordinator's branches the last scan found prepared on the resource",
            per_resource,
            registry=r,
        )
        self._oldest = Gauge(
            OLDEST_PREPARED,
            "How long the oldest of this coordinator's branches prepared on the resource has "
            "been listed by recovery's scans, seconds (counted from this process's first scan "
            "that listed it; 0 when none is prepared)",
            per_resource,
            registry=r,
        )
        self._pg_max = Gauge(
            PG_MAX_PREPARED,
            "PostgreSQL: the server's max_prepared_transactions",
            per_resource,
            registry=r,
        )
        self._pg_prepared = Gauge(
            PG_PREPARED,
            "PostgreSQL: transactions prepared on the server (every database and user)",
            per_resource,
            registry=r,
        )
        self._pg_headroom = Gauge(
            PG_HEADROOM,
            "PostgreSQL: max_prepared_transactions minus those prepared (0: PREPARE fails)",
            per_resource,
            registry=r,
        )
        self._pg_oldest_age = Gauge(
            PG_OLDEST_AGE,
            "PostgreSQL: age of the server's oldest prepared transaction "
            "(pg_prepared_xacts.prepared), seconds; 0 when none",
            per_resource,
            registry=r,
        )
        self._pg_xid_age = Gauge(
            PG_OLDEST_XID_AGE,
            "PostgreSQL: age(transaction) of the server's oldest prepared transaction, in "
            "transaction ids: the vacuum horizon it pins (wraparound at 2^31); 0 when none",
            per_resource,
            registry=r,
        )
        self._actions = Counter(
            RECOVERY_ACTIONS,
            "Recovery actions, by action (commit, rollback, decide-abort, kill-session, "
            "complete, verify, scan, expire) and result (done, failed, blocked, heuristic, "
            "waiting)",
            ["action", "result"],
            registry=r,
        )
        self._heuristic = Counter(
            HEURISTIC_OUTCOMES,
            "Branches recovery found ended the other way than the decision (a heuristic "
            "outcome: the transaction was not atomic), by resource",
            per_resource,
            registry=r,
        )
        for state in _UNFINISHED:
            self._transactions.labels(state=state.value)

    # -- what the coordinator reports ---------------------------------------------------------

    def decided(self, decisions: Iterable[Decision]) -> None:
        """Count the decisions taken by this call (not those already in force)."""
        for decision in decisions:
            if decision.taken:
                outcome = "commit" if decision.state is State.COMMITTED else "abort"
                self.decisions.labels(outcome=outcome, reason=reason_class(decision)).inc()

    def recovery_pass(self, report: Report, counts: Counts) -> None:
        """A pass that acted (or settled a gtrid) ended with `report`; `counts`: the unfinished
        transactions by state right after it."""
        self.decided(report.decisions)
        actions = collections.Counter(
            (action.action, action.result.split(":")[0].split(" ")[0]) for action in report.actions
        )
        for (action, result), n in actions.items():
            self._actions.labels(action=action, result=result).inc(n)
        for action in report.actions:
            if action.result.startswith("heuristic"):
                self._heuristic.labels(resource=action.resource).inc()
        for state in _UNFINISHED:
            self._transactions.labels(state=state.value).set(counts.by_state[state])
        self._in_doubt.set(counts.in_doubt)
        self._blocked.set(counts.blocked)
        self._pass_time.set(report.finished_ms / 1000)
        for scanned in report.scans.values():
            name = scanned.resource
            self._up.labels(name).set(scanned.reachable)
            if not scanned.reachable:
                for gauge in (self._prepared, self._oldest, *self._pg_gauges()):
                    _forget(gauge, name)
                continue
            self._prepared.labels(name).set(scanned.prepared)
            oldest = scanned.oldest_seen_ms
            self._oldest.labels(name).set(
                0 if oldest is None else (report.started_ms - oldest) / 1000
            )
            pg = scanned.pg
            if pg is not None:
                self._pg_max.labels(name).set(pg.max_prepared)
                self._pg_prepared.labels(name).set(pg.prepared)
                self._pg_headroom.labels(name).set(pg.max_prepared - pg.prepared)
                self._pg_oldest_age.labels(name).set(pg.oldest_age_s)
                self._pg_xid_age.labels(name).set(pg.oldest_xid_age)

    def _pg_gauges(self) -> tuple[Gauge, ...]:
        return (
            self._pg_max,
            self._pg_prepared,
            self._pg_headroom,
            self._pg_oldest_age,
            self._pg_xid_age,
        )

    # -- the endpoint -------------------------------------------------------------------------

    def serve(self, address: str) -> str:
        """Serve GET /metrics on `address` ("HOST:PORT", port 0: any free one) on a thread;
        the address bound. Raises `OSError` if it cannot bind."""
        host, _, port = address.rpartition(":")
        self._server, _ = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        return f"{host}:{self._server.server_port}"

    def close(self) -> None:
        """Stop serving (nothing if it never served)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _forget(gauge: Gauge, resource: str) -> None:
    """Drop a resource's series: a value a failed scan could not read is not shown stale."""
    with contextlib.suppress(KeyError):
        gauge.remove(resource)
