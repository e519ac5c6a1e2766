"""Recovery: the coordinator finishes every transaction it decided, and every orphan it finds.

One pass is scan, plan, act, report (docs/design.md, invariants 3 and 4):
`scan`      what a pass reads: each resource's prepared xids of this cluster, the log's records
`plan`      the planner: a pure function from those, the clock and the pass memory to the steps
`act`       runs a plan: ABORT decisions for orphans, phase 2 with backoff, the live-owner KILL
`report`    the pass's report, the state Status reads, counters, log lines
`memory`    what one pass remembers for the next: suspects, backoff, PostgreSQL evidence
`retention` what the log keeps: abandoned transactions expire, finished ones are pruned
`lanes`     one thread pool per resource: a database that hangs holds up only its own work
`loop`      `Recovery`: the loop, and the pass that puts the above together
"""

from .lanes import Stuck
from .loop import Recovery
from .plan import RECOVERY_ABORT_REASON
from .report import Action, Report, ResourceState, Scanned
from .retention import EXPIRED_REASON

__all__ = [
    "EXPIRED_REASON",
    "RECOVERY_ABORT_REASON",
    "Action",
    "Recovery",
    "Report",
    "ResourceState",
    "Scanned",
    "Stuck",
]
