"""The benchmark (bench/, README "Benchmark") keeps working: each mode's measuring path runs
with tiny parameters against the suite's servers. No figure is asserted, only that every
variant ran and the money and the branches came out right."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import coordinator_alone, recovery, transfer
from bench._env import MY_NAME, PG_NAME, cpu_s
from bench._report import table
from bench.variants import VARIANTS


def test_the_transfer_benchmark_runs_every_variant_and_conserves_the_money(
    pg_config: dict[str, Any], maria_config: dict[str, Any], coordinator_factory: Any
) -> None:
    coordinator = coordinator_factory(resources={PG_NAME: pg_config, MY_NAME: maria_config})
    options = transfer.Options(threads=(1, 2), rounds=1, slice_s=0.3, warmup_s=0.2, accounts=20)

    probes = {"client": lambda: cpu_s(os.getpid()), "coordinator": lambda: cpu_s(coordinator.pid)}

    report = transfer.measure(
        options, pg_config, maria_config, coordinator, progress=print, cpu_probes=probes
    )

    assert report.ok, report.render()
    assert set(report.slices) == {(v, c) for v in VARIANTS for c in (1, 2)}
    assert all(run.latencies_ms for runs in report.slices.values() for run in runs)
    text = report.render()
    assert "each on both sides" in text
    assert "twostep / hand 2PC" in text
    # CPU by process per variant: only twostep's transfers keep the coordinator busy.
    assert set(report.cpu) == set(report.slices)
    assert all(spent["client"] > 0 for spent in report.cpu.values())
    assert report.cpu[("twostep", 1)]["coordinator"] > 0
    assert "| twostep " in report.cpu_table() and "coordinator CPU ms" in text


def test_the_coordinator_benchmark_counts_at_most_a_commit_and_an_ack_rpc_per_decision(
    tmp_path: Path,
) -> None:
    row = coordinator_alone.measure_decisions(tmp_path, threads=2, seconds=0.3)

    assert row.run.latencies_ms and not row.run.errors
    # One Describe per process; then per decision a Commit (maybe shared) and a batched Ack:
    # no Begin, no probe on a connected channel.
    assert 1 <= row.rpcs <= 2 * row.decisions + 1
    assert row.counters["log_batches"] >= row.counters["log_fsyncs"] >= 1
    assert row.coordinator_cpu_s > 0 and len(row.cells()) == 10
    memory = coordinator_alone.measure_memory(tmp_path, active=20, threads=2)
    assert [resident > 0 for _, resident, _ in memory] == [True, True]


def test_the_coordinator_benchmark_runs_on_the_postgresql_log_store(
    pg_config: dict[str, Any], tmp_path: Path
) -> None:
    url = "postgresql://{username}@{host}:{port}/{database}".format(**pg_config)
    settings = coordinator_alone.postgresql_log(url)
    row = coordinator_alone.measure_decisions(tmp_path, threads=2, seconds=0.3, settings=settings)

    assert row.run.latencies_ms and not row.run.errors
    assert row.counters["log_batches"] >= row.counters["log_fsyncs"] >= 1


def test_the_recovery_benchmark_finishes_orphans_and_decided_branches(
    pg_config: dict[str, Any], maria_config: dict[str, Any], tmp_path: Path
) -> None:
    # Recovery at once: a 1 s interval between the two scans an orphan needs, no grace.
    settings = {"recovery_interval_s": 1, "recovery_grace_s": 0}
    for case, rows in (("orphans", (0, 0)), ("decided", (3, 3))):
        result = recovery.measure(pg_config, maria_config, tmp_path / case, case, 3, settings)
        assert result.ok, table(recovery.Result.headers, [result.cells()])
        assert (result.left, result.rows) == (0, rows)
