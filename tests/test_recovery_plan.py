"""The recovery planner (coordinator/recovery/plan.py) without databases: plain log records,
listings and pass memory in, steps, ABORT proposals and findings out.

The same rules run against the real PostgreSQL and MariaDB in test_recovery.py and the crash
suites; here each rule is one small case. test_recovery_model.py throws arbitrary facts at the
planner and drives it over many passes (hypothesis); its helpers come from here.
"""

from __future__ import annotations

import base64

from twostep.client.tpc import Xid, new_gtrid, parse_gtrid
from twostep.coordinator.log import BranchRecord, State, TransactionRecord
from twostep.coordinator.recovery.memory import (
    MAX_BACKOFF_MS,
    Backoff,
    PassMemory,
    branch_key,
)
from twostep.coordinator.recovery.plan import (
    NOT_SCANNED,
    RECOVERY_ABORT_REASON,
    WAITING_FOR_NEXT_SCAN,
    Facts,
    Listing,
    Plan,
    is_ours,
    listed_branches,
    plan,
    resources_due,
    unknown_resource,
)

CLUSTER = "ours"
NOW = 1_700_000_000_000  # unix ms, a whole second
GRACE = 10_000
RESOURCES = {"orders": "postgresql", "billing": "mysql"}
ORDERS = BranchRecord("orders", "orders", "postgresql")
BILLING = BranchRecord("billing", "billing", "mysql", session_id=42)


def gtrid(deadline_ms: int, n: int = 0, cluster: str = CLUSTER) -> str:
    """A twostep gtrid of `cluster` whose own deadline is `deadline_ms` (a whole second);
    numbered, so that hypothesis sees the same ids when it replays an example."""
    nonce = base64.b32encode(n.to_bytes(15, "big")).decode().lower()
    return f"{new_gtrid(cluster, deadline_ms // 1000).rsplit('.', 1)[0]}.{nonce}"


PAST = gtrid(NOW - 60_000)  # its deadline passed a minute ago
FUTURE = gtrid(NOW + 60_000, 1)


def row(
    g: str,
    state: State,
    *branches: BranchRecord,
    decided_ms: int = NOW - 60_000,
    completed: bool = False,
) -> TransactionRecord:
    deadline = parse_gtrid(g).deadline_unix_s * 1000
    return TransactionRecord(
        gtrid=g,
        state=state,
        begun_ms=deadline - 30_000,
        deadline_ms=deadline,
        decided_ms=None if state is State.ACTIVE else decided_ms,
        reason="",
        branches=branches,
        completed_ms=decided_ms + 1 if completed else None,
    )


def listing(resource: str, *xids: Xid, txids: dict[Xid, int] | None = None) -> Listing:
    return Listing(resource, frozenset(xids), txids or {})


def facts(
    *listings: Listing,
    decided: tuple[TransactionRecord, ...] = (),
    records: tuple[TransactionRecord, ...] = (),
    memory: PassMemory | None = None,
    now: int = NOW,
    eager: bool = False,
    only: str | None = None,
    resources: dict[str, str] = RESOURCES,
) -> Facts:
    return Facts(
        now_ms=now,
        cluster=CLUSTER,
        resources=resources,
        listings={item.resource: item for item in listings},
        decided=decided,
        records={r.gtrid: r for r in records},
        memory=memory or PassMemory(),
        grace_ms=GRACE,
        eager=eager,
        only=only,
    )


def steps(p: Plan) -> list[tuple[str, str, str, int]]:
    """(gtrid, resource, verb, pg_txid) of every step of the plan's transactions."""
    return [(s.gtrid, s.resource, s.verb, s.pg_txid) for t in p.txns.values() for s in t.steps]


def findings(p: Plan) -> list[tuple[str, str, str, str, bool]]:
    return [
        (f.action.gtrid, f.action.resource, f.action.action, f.action.result, f.logged)
        for f in p.findings
    ]


def nothing_done(p: Plan) -> bool:
    return not steps(p) and not p.aborts and not p.findings


# -- decided transactions ----------------------------------------------------------------------


def test_a_commit_whose_branches_are_listed_is_committed_on_each_then_completed():
    record = row(PAST, State.COMMITTED, ORDERS, BILLING)
    p = plan(
        facts(
            listing("orders", Xid.of(PAST, "orders")),
            listing("billing", Xid.of(PAST, "billing")),
            decided=(record,),
        )
    )
    assert steps(p) == [(PAST, "orders", "commit", 0), (PAST, "billing", "commit", 0)]
    txn = p.txns[PAST]
    assert txn.complete and not txn.blocked and not p.findings and not p.aborts
    (mysql,) = [s for s in txn.steps if s.resource == "billing"]
    assert mysql.session_id == 42  # the live owner, if one holds it, is this session
    assert mysql.deadline_ms == parse_gtrid(PAST).deadline_unix_s * 1000


def test_an_abort_whose_branch_is_listed_is_rolled_back():
    record = row(PAST, State.ABORTED, ORDERS)
    p = plan(
        facts(listing("orders", Xid.of(PAST, "orders")), listing("billing"), decided=(record,))
    )
    assert steps(p) == [(PAST, "orders", "rollback", 0)]


def test_a_gone_branch_of_a_commit_is_verified_even_without_its_xid8():
    # MariaDB cannot tell how a gone branch ended: the verify step notes it unverified.
    record = row(PAST, State.COMMITTED, ORDERS, BILLING)
    p = plan(facts(listing("orders"), listing("billing"), decided=(record,)))
    assert steps(p) == [(PAST, "orders", "verify", 0), (PAST, "billing", "verify", 0)]
    assert all(s.commit for s in p.txns[PAST].steps) and p.txns[PAST].complete


def test_a_gone_postgresql_branch_is_verified_by_the_xid8_the_client_reported():
    reported = BranchRecord("orders", "orders", "postgresql", transaction_id=7_000_000_123)
    record = row(PAST, State.COMMITTED, reported)
    p = plan(facts(listing("orders"), listing("billing"), decided=(record,)))
    assert steps(p) == [(PAST, "orders", "verify", 7_000_000_123)]


def test_a_gone_postgresql_branch_is_verified_by_the_xid8_an_earlier_scan_saw():
    record = row(PAST, State.COMMITTED, ORDERS)
    memory = PassMemory(evidence={("orders", Xid.of(PAST, "orders")): 4_294_967_301})
    p = plan(facts(listing("orders"), listing("billing"), decided=(record,), memory=memory))
    assert steps(p) == [(PAST, "orders", "verify", 4_294_967_301)]


def test_a_gone_branch_of_an_abort_is_verified_only_when_its_xid8_is_known():
    # A branch of an ABORT may never have been prepared: nothing to verify without evidence.
    known = BranchRecord("orders", "orders", "postgresql", transaction_id=99)
    unknown = row(PAST, State.ABORTED, ORDERS, BILLING)
    p = plan(facts(listing("orders"), listing("billing"), decided=(unknown,)))
    assert steps(p) == [] and p.txns[PAST].complete and not p.txns[PAST].blocked
    p = plan(
        facts(listing("orders"), listing("billing"), decided=(row(PAST, State.ABORTED, known),))
    )
    assert steps(p) == [(PAST, "orders", "verify", 99)]
    assert not p.txns[PAST].steps[0].commit


def test_a_decision_within_the_grace_is_left_to_its_client():
    xid = Xid.of(PAST, "orders")
    for decided_ms, acted in ((NOW - GRACE + 1, False), (NOW - GRACE, True)):
        record = row(PAST, State.COMMITTED, ORDERS, decided_ms=decided_ms)
        # Found through the log (decided, not acknowledged) and through the scan alike.
        for p in (
            plan(facts(listing("orders", xid), listing("billing"), decided=(record,))),
            plan(facts(listing("orders", xid), listing("billing"), records=(record,))),
        ):
            assert (steps(p) == [(PAST, "orders", "commit", 0)]) is acted
            assert not p.aborts and not p.findings


def test_an_active_row_passed_as_decided_is_never_finished():
    record = row(PAST, State.ACTIVE, ORDERS)
    p = plan(facts(listing("orders"), listing("billing"), decided=(record,)))
    assert nothing_done(p) and not p.txns


def test_a_branch_on_an_unregistered_resource_is_blocked_on_every_pass_and_logged():
    ghost = BranchRecord("ghost", "ghost", "mysql")
    record = row(PAST, State.COMMITTED, ORDERS, ghost)
    p = plan(
        facts(listing("orders", Xid.of(PAST, "orders")), listing("billing"), decided=(record,))
    )
    assert findings(p) == [(PAST, "ghost", "commit", unknown_resource("ghost"), True)]
    assert steps(p) == [(PAST, "orders", "commit", 0)]  # the other branch is finished
    assert p.txns[PAST].blocked  # in doubt: never marked completed


def test_a_branch_whose_resource_is_now_another_dialect_is_blocked_and_in_doubt():
    record = row(PAST, State.COMMITTED, BranchRecord("orders", "orders", "mysql"))
    p = plan(facts(listing("orders"), decided=(record,)))
    ((_, resource, verb, why, logged),) = findings(p)
    assert (resource, verb, logged) == ("orders", "commit", True)
    assert why == "blocked: resource orders is postgresql but the branch was prepared on mysql"
    assert steps(p) == [] and p.txns[PAST].blocked
    # Its xid listed prepared on the resource is finished by the rule for listed xids (the
    # decision is known), and the transaction stays in doubt for the operator all the same.
    p = plan(facts(listing("orders", Xid.of(PAST, "orders")), decided=(record,)))
    assert len(p.findings) == 1 and p.txns[PAST].blocked
    assert steps(p) == [(PAST, "orders", "commit", 0)]


def test_a_branch_with_an_invalid_bqual_is_blocked():
    record = row(PAST, State.ABORTED, BranchRecord("orders", "no spaces", "postgresql"))
    p = plan(facts(listing("orders"), decided=(record,)))
    ((_, resource, verb, why, logged),) = findings(p)
    assert (resource, verb, logged) == ("orders", "rollback", True)
    assert why.startswith("blocked: invalid branch qualifier")
    assert p.txns[PAST].blocked


def test_a_branch_on_a_resource_not_scanned_in_this_pass_is_retried_and_in_doubt():
    record = row(PAST, State.COMMITTED, ORDERS, BILLING)
    p = plan(facts(listing("orders", Xid.of(PAST, "orders")), decided=(record,)))
    assert findings(p) == [(PAST, "billing", "commit", NOT_SCANNED, True)]
    assert steps(p) == [(PAST, "orders", "commit", 0)] and p.txns[PAST].blocked


def test_a_branch_backing_off_is_reported_and_not_tried_until_its_time_or_an_eager_pass():
    record = row(PAST, State.COMMITTED, ORDERS)
    xid = Xid.of(PAST, "orders")
    memory = PassMemory(backoff={branch_key(PAST, "orders"): Backoff(3, NOW + 1)})
    backing_off = plan(facts(listing("orders", xid), decided=(record,), memory=memory))
    ((_, resource, verb, why, logged),) = findings(backing_off)
    assert (resource, verb, logged) == ("orders", "commit", False)
    assert why.startswith("failed: retrying at ") and why.endswith("(3 failures)")
    assert steps(backing_off) == [] and backing_off.txns[PAST].blocked
    for due in (
        facts(listing("orders", xid), decided=(record,), memory=memory, eager=True),
        facts(listing("orders", xid), decided=(record,), memory=memory, now=NOW + 1),
    ):
        p = plan(due)
        assert steps(p) == [(PAST, "orders", "commit", 0)] and not p.findings


def test_a_listed_branch_the_record_does_not_name_is_finished_but_not_completed():
    # A decided transaction whose branch the client never reported (its Commit carried the
    # other one): found only by the scan, so the transaction is not marked completed for it.
    record = row(PAST, State.COMMITTED, ORDERS, completed=True)
    p = plan(
        facts(listing("orders"), listing("billing", Xid.of(PAST, "billing")), records=(record,))
    )
    assert steps(p) == [(PAST, "billing", "commit", 0)]
    assert not p.txns[PAST].complete


def test_a_mysql_xid_listed_by_two_resources_is_finished_where_its_bqual_names():
    # XA RECOVER is server-wide: both MariaDB resources list every xid of the server.
    resources = {**RESOURCES, "audit": "mysql"}
    xid = Xid.of(PAST, "billing")
    both = (listing("audit", xid), listing("billing", xid), listing("orders"))
    record = row(PAST, State.ABORTED, BILLING)
    p = plan(facts(*both, records=(record,), resources=resources))
    assert steps(p) == [(PAST, "billing", "rollback", 0)]
    assert listed_branches(PAST, {x.resource: x for x in both}, resources) == [
        BranchRecord("billing", "billing", "mysql")
    ]
    # A bqual naming no resource that lists it: the first that does finishes it.
    stray = Xid.of(PAST, "elsewhere")
    p = plan(
        facts(
            listing("audit", stray),
            listing("billing", stray),
            records=(record,),
            resources=resources,
        )
    )
    assert steps(p) == [(PAST, "audit", "rollback", 0)]


# -- orphans -----------------------------------------------------------------------------------


def test_an_undecided_branch_is_aborted_only_on_its_second_sighting_past_the_deadline():
    xid = Xid.of(PAST, "orders")
    first = plan(facts(listing("orders", xid), listing("billing")))
    assert findings(first) == [(PAST, "orders", "decide-abort", WAITING_FOR_NEXT_SCAN, False)]
    assert not first.aborts and not steps(first)
    assert first.suspects == {("orders", xid)}

    second = plan(
        facts(listing("orders", xid), listing("billing"), memory=PassMemory(first.suspects))
    )
    (abort,) = second.aborts
    assert abort.proposal.gtrid == PAST and not abort.proposal.commit
    assert abort.proposal.reason == RECOVERY_ABORT_REASON
    assert abort.proposal.fallback_deadline_ms == parse_gtrid(PAST).deadline_unix_s * 1000
    assert [(s.resource, s.xid, s.verb) for s in abort.steps] == [("orders", xid, "rollback")]
    assert abort.complete and not second.findings and not steps(second)


def test_an_orphan_aborted_on_one_branchs_second_sighting_takes_its_other_branches_along():
    # A pass ran between the client's two prepares: "orders" was seen before "billing" was
    # prepared. The ABORT is the transaction's: it names and rolls back both at once.
    orders, billing = Xid.of(PAST, "orders"), Xid.of(PAST, "billing")
    memory = PassMemory(frozenset({("orders", orders)}))
    p = plan(facts(listing("orders", orders), listing("billing", billing), memory=memory))
    (abort,) = p.aborts
    assert sorted((s.resource, s.verb) for s in abort.steps) == [
        ("billing", "rollback"),
        ("orders", "rollback"),
    ]
    assert sorted(b.resource for b in abort.proposal.branches) == ["billing", "orders"]
    assert not p.findings


def test_an_undecided_branch_before_its_deadline_is_left_to_its_client_but_remembered():
    xid = Xid.of(FUTURE, "orders")
    seen = PassMemory(frozenset({("orders", xid)}))
    for memory in (PassMemory(), seen):
        p = plan(facts(listing("orders", xid), memory=memory))
        assert nothing_done(p) and p.suspects == {("orders", xid)}
    # Once its deadline passed, two sightings are enough: the earlier one counts.
    deadline = parse_gtrid(FUTURE).deadline_unix_s * 1000
    assert not plan(facts(listing("orders", xid), memory=seen, now=deadline - 1)).aborts
    assert plan(facts(listing("orders", xid), memory=seen, now=deadline)).aborts


def test_an_active_row_is_judged_like_no_row_and_names_the_owner_session():
    xid = Xid.of(PAST, "billing")
    enlisted = row(PAST, State.ACTIVE, ORDERS, BILLING)  # the client registered session 42
    memory = PassMemory(frozenset({("billing", xid)}))
    p = plan(facts(listing("orders"), listing("billing", xid), records=(enlisted,), memory=memory))
    (abort,) = p.aborts
    assert [s.session_id for s in abort.steps] == [42]
    assert abort.proposal.branches == (BranchRecord("billing", "billing", "mysql", 42, 0),)


def test_an_orphan_abort_keeps_the_postgresql_xid8_the_scan_saw():
    xid = Xid.of(PAST, "orders")
    seen = listing("orders", xid, txids={xid: 123_456})
    p = plan(facts(seen, listing("billing"), memory=PassMemory(frozenset({("orders", xid)}))))
    (abort,) = p.aborts
    assert abort.proposal.branches == (BranchRecord("orders", "orders", "postgresql", 0, 123_456),)


def test_an_orphan_is_marked_completed_only_when_every_resource_was_scanned():
    # Its branches are known only from the scans: one may wait on the resource not scanned.
    xid = Xid.of(PAST, "orders")
    memory = PassMemory(frozenset({("orders", xid)}))
    (abort,) = plan(facts(listing("orders", xid), memory=memory)).aborts
    assert not abort.complete


def test_suspects_of_a_resource_not_scanned_are_kept_and_of_a_scanned_one_replaced():
    gone, unscanned = Xid.of(PAST, "orders"), Xid.of(PAST, "billing")
    memory = PassMemory(frozenset({("orders", gone), ("billing", unscanned)}))
    p = plan(facts(listing("orders"), memory=memory))
    assert p.suspects == {("billing", unscanned)} and nothing_done(p)


def test_xids_of_other_clusters_are_never_touched_nor_remembered():
    # Listed past their deadline, even already in the memory (as a scan that did not filter
    # would have put them): the plan never judges them.
    foreign = [
        Xid.of(gtrid(NOW - 60_000, 2, cluster="theirs"), "orders"),
        Xid.of(gtrid(NOW - 60_000, 3, cluster="local"), "orders"),  # manual 2PC's
    ]
    memory = PassMemory(frozenset(("orders", x) for x in foreign))
    p = plan(facts(listing("orders", *foreign), listing("billing"), memory=memory))
    assert nothing_done(p) and p.suspects == frozenset()
    assert not is_ours(foreign[0], CLUSTER) and is_ours(Xid.of(PAST, "x"), CLUSTER)


# -- settling one transaction (Admin.Resolve) --------------------------------------------------


def test_settling_one_gtrid_ignores_grace_and_backoff_and_touches_no_other():
    just_decided = row(PAST, State.COMMITTED, ORDERS, decided_ms=NOW)
    other = gtrid(NOW - 60_000, 5)
    xids = (Xid.of(PAST, "orders"), Xid.of(other, "orders"))
    memory = PassMemory(
        frozenset({("orders", xids[1])}),
        backoff={branch_key(PAST, "orders"): Backoff(9, NOW + 60_000)},
    )
    p = plan(
        facts(
            listing("orders", *xids),
            decided=(just_decided,),
            memory=memory,
            eager=True,
            only=PAST,
        )
    )
    assert steps(p) == [(PAST, "orders", "commit", 0)]
    assert not p.aborts and not p.findings  # the orphan of `other` waits for a whole pass
    assert p.suspects == memory.suspects  # and the memory of whole passes is not changed


# -- scans and memory --------------------------------------------------------------------------


def test_resources_backing_off_are_not_scanned_until_their_time_unless_eager():
    backoff = {"billing": Backoff(2, NOW + 1)}
    due, skipped = resources_due(["billing", "orders"], backoff, NOW, eager=False)
    assert due == ["orders"] and len(skipped) == 1
    assert skipped[0].startswith("billing: not scanned, retrying at ")
    assert skipped[0].endswith("after 2 failure(s)")
    assert resources_due(["billing", "orders"], backoff, NOW, eager=True) == (
        ["billing", "orders"],
        [],
    )
    assert resources_due(["billing"], backoff, NOW + 1, eager=False) == (["billing"], [])


def test_backoff_doubles_from_the_interval_up_to_its_limit_and_ends_with_a_success():
    memory = PassMemory()
    delays = []
    for failures in range(1, 10):
        assert memory.fail("billing", NOW, 1_000) == failures
        delays.append(memory.backoff["billing"].not_before_ms - NOW)
    assert delays[:4] == [1_000, 2_000, 4_000, 8_000] and delays[-1] == MAX_BACKOFF_MS
    memory.succeeded("billing")
    assert memory.fail("billing", NOW, 1_000) == 1


def test_the_backoff_of_branches_not_worked_on_is_forgotten_that_of_resources_kept():
    memory = PassMemory()
    for key in ("orders", branch_key(PAST, "orders"), branch_key(FUTURE, "billing")):
        memory.fail(key, NOW, 1_000)
    memory.keep_backoff_of(RESOURCES, {PAST})
    assert set(memory.backoff) == {"orders", branch_key(PAST, "orders")}
