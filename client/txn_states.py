"""The words an operator reads for a transaction's state: one definition for the admin CLI
(`twostep list --state`, `status`, `show`, `--json`), the coordinator's Admin service and the
README (whose table a test checks against `TxnState` and `GROUPS`).

Every transaction is in exactly one `TxnState`. The log gives the decision and whether
phase 2 is finished; the coordinator's recovery scans add the one thing the log cannot know:
a branch prepared on a database for a gtrid with no decision (`ORPHANED`).
"""

from __future__ import annotations

import enum

__all__ = ["GROUPS", "IN_DOUBT", "TxnState", "state_of"]


class TxnState(enum.StrEnum):
    """A transaction's state as an operator sees it; `description` says what it means."""

    description: str

    def __new__(cls, word: str, description: str) -> TxnState:
        member = str.__new__(cls, word)
        member._value_ = word
        member.description = description
        return member

    ACTIVE = "active", "begun, no decision yet; its client may still commit it"
    ORPHANED = (
        "orphaned",
        "no decision, past its deadline, and a branch of it prepared on a database "
        "(its client is gone): recovery decides ABORT once two scans saw it",
    )
    COMMITTING = "committing", "COMMIT decided; some branch is not known committed yet"
    ABORTING = "aborting", "ABORT decided; some branch is not known rolled back yet"
    COMMITTED = "committed", "COMMIT decided and every branch committed: finished"
    ABORTED = "aborted", "ABORT decided and every branch rolled back (or never prepared): finished"


#: In doubt: a branch may be prepared on a database, holding its locks, until recovery (or
#: the client) finishes it.
IN_DOUBT = frozenset({TxnState.ORPHANED, TxnState.COMMITTING, TxnState.ABORTING})

#: The words `--state` takes beside the states themselves: name -> (description, states).
GROUPS: dict[str, tuple[str, frozenset[TxnState]]] = {
    "in-doubt": ("orphaned, committing or aborting: a branch may still be prepared", IN_DOUBT),
    "blocked": (
        "in doubt, and the last recovery pass could not finish a branch of it (unreachable "
        "database, unregistered resource, live session): `twostep show` says why",
        IN_DOUBT,
    ),
}


def state_of(logged: str | None, completed: bool, prepared_orphan: bool) -> TxnState:
    """The state of a transaction whose log row says `logged` ("active", "committed",
    "aborted"; None: no row), `completed` (phase 2 acknowledged), and whether the last scan
    found a branch of it prepared past its deadline with no decision (`prepared_orphan`)."""
    if logged in (None, "active"):
        return TxnState.ORPHANED if prepared_orphan else TxnState.ACTIVE
    if logged == "committed":
        return TxnState.COMMITTED if completed else TxnState.COMMITTING
    if logged == "aborted":
        return TxnState.ABORTED if completed else TxnState.ABORTING
    raise ValueError(f"{logged!r} is not a logged state")
