"""How long one recovery pass takes to finish 1,000 orphaned prepared branches (a measurement).

Not part of the test suite (it prepares 1,000 branches, one session each: 20-45 s of setup);
run it with the suite's fixtures (the twostep pytest plugin, loaded by itself):
    .venv/bin/python -m pytest -s bench/recovery_scale.py
It prints the times and asserts only that everything was finished. PostgreSQL holds at most
`max_prepared_transactions` (64 on the throwaway server) prepared transactions, so the 1,000
are 60 PostgreSQL branches (each paired with a MariaDB branch of the same gtrid) and 940
MariaDB branches.

The coordinator is in-process here and starts with a fresh decision log, as after a restart
that lost nothing: the orphans' gtrids are unknown to the log (presumed abort) or, in the
"decided" case, decided COMMIT by a client that died before phase 2.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_recovery import Databases, dbs_fixture, new_cluster  # noqa: F401 - the fixture "dbs"

from twostep.client import Connection
from twostep.client.tpc import Xid, new_gtrid, require_two_phase
from twostep.coordinator import Begun, BranchRecord, Proposal, Recovery, SqliteDecisionLog
from twostep.coordinator._claim import ClusterClaims
from twostep.coordinator._registry import ResourceRegistry

PG_BRANCHES = 60
MARIA_BRANCHES = 940


def prepare_many(dbs: Databases, resource: str, gtrids: list[str], first_row: int) -> None:
    connection = Connection.from_config(resource, dbs.configs[resource])
    ops = require_two_phase(connection.dialect.name, connection=resource)

    def one(i: int) -> None:
        session = connection.connect()
        xid = Xid.of(gtrids[i], resource)
        ops.begin(session, xid, None)
        connection.dialect.run(session, "INSERT INTO t (id) VALUES (?)", (first_row + i,))
        ops.prepare(session, xid)
        connection.dialect.close(session)  # the client died

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(len(gtrids))))


@pytest.mark.parametrize("case", ["orphans", "decided"])
@pytest.mark.parametrize("workers", [1, 4, 8])
def test_one_pass_finishes_1000_prepared_branches(dbs, tmp_path, case, workers):
    cluster = new_cluster()
    past = int(time.time()) - 1
    future = int(time.time()) + 3600
    deadline = past if case == "orphans" else future
    pg_gtrids = [new_gtrid(cluster, deadline) for _ in range(PG_BRANCHES)]
    maria_only = [new_gtrid(cluster, deadline) for _ in range(MARIA_BRANCHES - PG_BRANCHES)]
    started = time.monotonic()
    prepare_many(dbs, "orders", pg_gtrids, 0)
    prepare_many(dbs, "billing", pg_gtrids + maria_only, 0)
    setup_s = time.monotonic() - started

    decision_log = SqliteDecisionLog(tmp_path / "log")
    registry = ResourceRegistry(dbs.resource_configs(tmp_path))
    claims = ClusterClaims(registry, cluster, idle_timeout_s=600)
    recovery = Recovery(
        decision_log,
        registry,
        cluster_id=cluster,
        grace_ms=0,
        claims=claims,
        retention_ms=86_400_000,
        workers_per_resource=workers,
    )
    if case == "decided":

        def branches(gtrid: str) -> tuple[BranchRecord, ...]:
            maria = BranchRecord("billing", "billing", "mysql")
            if gtrid in pg_gtrids:
                return (BranchRecord("orders", "orders", "postgresql"), maria)
            return (maria,)

        proposals = [Proposal(g, True, branches(g), "", future * 1000) for g in pg_gtrids]
        proposals += [Proposal(g, True, branches(g), "", future * 1000) for g in maria_only]
        # Unknown gtrids would be ABORTED: begin them first, then decide COMMIT.
        now = time.time_ns() // 1_000_000
        decision_log.record_begun([Begun(p.gtrid, now, future * 1000) for p in proposals])
        assert {d.state.value for d in decision_log.decide(proposals)} == {"committed"}
    try:
        first = time.monotonic()
        report1 = recovery.run_pass()  # orphans: first sighting; decided: does the work
        first_s = time.monotonic() - first
        second = time.monotonic()
        report2 = recovery.run_pass()  # orphans: decide ABORT (one fsync) and roll back
        second_s = time.monotonic() - second
    finally:
        recovery.stop()
        claims.close()
        registry.close()
        decision_log.close()

    working = report2 if case == "orphans" else report1
    done = [a for a in working.actions if a.action in ("commit", "rollback")]
    assert len(done) == PG_BRANCHES + MARIA_BRANCHES
    assert {a.result for a in done} == {"done"}
    assert not dbs.prepared("orders") & {Xid(g, "orders") for g in pg_gtrids}
    ours = {x for x in dbs.prepared("billing") if x.gtrid.startswith(f"ts1.{cluster}.")}
    assert not ours
    print(
        f"\n[{case}, {workers} session(s) per resource] setup {setup_s:.1f} s; "
        f"pass 1 {first_s:.2f} s ({len(report1.actions)} actions); "
        f"pass 2 {second_s:.2f} s ({len(report2.actions)} actions); "
        f"{len(done)} branches finished"
    )
