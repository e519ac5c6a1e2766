"""What recovery remembers from one pass to the next: the pass memory the planner reads.

`suspects`
    The undecided xids of this cluster that the last scan of each resource listed, as
    (resource, xid). An orphan is aborted only when two consecutive scans list it, so that a
    branch whose client is between PREPARE and Commit right now is not judged on one sighting.
`backoff`
    Failures by resource name (a scan) or by `branch_key` (a branch), and the time before
    which each is not tried again: doubling from the recovery interval, at most
    `MAX_BACKOFF_MS`. An operator's pass (eager) ignores it.
`evidence`
    PostgreSQL: the transaction id (xid8) of each branch a scan listed prepared, as
    (resource, xid) -> xid8, so that once the branch is gone its database can say how it
    ended (a heuristic outcome if not the decided way). At most `MAX_EVIDENCE`, oldest first out.
`first_seen`
    When a scan first listed each xid of this cluster still prepared on each resource (the
    metrics' oldest prepared branch age); an xid no longer listed is forgotten.

One `PassMemory` per `Recovery`, read and changed only under its pass lock (`loop`). Nothing
here is durable, and nothing needs to be: after a restart, an orphan waits one more scan,
a backoff starts over, and a gone branch without evidence is verified by the xid8 the client
reported with Commit (kept in the log) or noted as unverified.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from twostep.client.tpc import Xid

__all__ = ["MAX_BACKOFF_MS", "MAX_EVIDENCE", "Backoff", "PassMemory", "branch_key"]

MAX_BACKOFF_MS = 60_000
MAX_EVIDENCE = 100_000  # PostgreSQL transaction ids remembered for heuristic checks


@dataclass(frozen=True)
class Backoff:
    """`failures` in a row; not tried again before `not_before_ms` (unix epoch ms)."""

    failures: int
    not_before_ms: int


def branch_key(gtrid: str, resource: str) -> str:
    """The backoff key of a branch (a resource's key is its name; a gtrid holds no '/')."""
    return f"{gtrid}/{resource}"


@dataclass
class PassMemory:
    """The pass memory (see the module docstring)."""

    suspects: frozenset[tuple[str, Xid]] = frozenset()
    backoff: dict[str, Backoff] = field(default_factory=dict)
    evidence: dict[tuple[str, Xid], int] = field(default_factory=dict)
    first_seen: dict[str, dict[Xid, int]] = field(default_factory=dict)

    def fail(self, key: str, now_ms: int, interval_ms: int) -> int:
        """One more failure of `key`: back off; how many failures in a row now."""
        previous = self.backoff.get(key)
        failures = previous.failures + 1 if previous else 1
        delay = min(interval_ms * 2 ** (failures - 1), MAX_BACKOFF_MS)
        self.backoff[key] = Backoff(failures, now_ms + delay)
        return failures

    def succeeded(self, key: str) -> None:
        self.backoff.pop(key, None)

    def keep_backoff_of(self, resources: Collection[str], gtrids: Collection[str]) -> None:
        """Forget the backoff of branches whose transaction the pass did not work on (finished
        elsewhere, or gone); a resource's is kept."""
        self.backoff = {
            key: b
            for key, b in self.backoff.items()
            if key in resources or key.split("/")[0] in gtrids
        }

    def remember_txids(self, resource: str, txids: Mapping[Xid, int]) -> None:
        for xid, txid in txids.items():
            self.evidence[(resource, xid)] = txid
        while len(self.evidence) > MAX_EVIDENCE:
            del self.evidence[next(iter(self.evidence))]

    def listed(self, resource: str, xids: Collection[Xid], now_ms: int) -> int | None:
        """A scan of `resource` at `now_ms` listed `xids`: when the oldest of them was first
        listed (None: `xids` is empty)."""
        before = self.first_seen.get(resource, {})
        seen = {xid: before.get(xid, now_ms) for xid in xids}
        self.first_seen[resource] = seen
        return min(seen.values(), default=None)

    def forget_txid(self, resource: str, xid: Xid) -> None:
        self.evidence.pop((resource, xid), None)
