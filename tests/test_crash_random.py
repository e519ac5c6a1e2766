"""The crash suite, randomized: the bank workload under a stream of mixed kills (fixed seed).

Three client processes (two threads each) make transfers through proxies while a seeded
random schedule kills things: a client by SIGKILL or at one of its failpoints, the
coordinator by SIGKILL or at one of its failpoints (restarted at once, sometimes re-armed),
PostgreSQL or MariaDB by SIGKILL (restarted at once), or cuts the clients' connections to a
database (sometimes refusing reconnects for a moment). The coordinator's recovery loop runs
throughout. At checkpoints (and at the end) the clients are stopped, recovery finishes, and
every bank invariant must hold.

The seed is printed; TWOSTEP_CRASH_SEED=<n> replays another schedule (timing still varies:
the schedule, not the interleaving, is what the seed fixes).
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Iterator

import pytest
from bank import Bank, Worker

from twostep.client.tpc.failpoints import (
    AFTER_DECISION,
    AFTER_DECISION_FSYNC,
    BEFORE_COMMIT_REQUEST,
    BEFORE_DECISION_FSYNC,
    BEFORE_PREPARE,
    BETWEEN_COMMITS,
    BETWEEN_PREPARES,
    DURING_RECOVERY,
)
from twostep.testing import CoordinatorProcess

SEED = int(os.environ.get("TWOSTEP_CRASH_SEED", "20261127"))
KILLS = 100  # at least this many kills, checkpoint kills not counted
CHECKPOINT_EVERY = 35  # kills between two checks of the invariants
BUDGET_S = 170.0  # the whole run, checkpoints included
WORKERS = 3
RECOVERY = {"recovery_interval_s": 0.5, "recovery_grace_s": 0.5, "kill_grace_s": 1}

CLIENT_FAILPOINTS = (
    BEFORE_PREPARE,
    BETWEEN_PREPARES,
    BEFORE_COMMIT_REQUEST,
    AFTER_DECISION,
    BETWEEN_COMMITS,
)
COORDINATOR_FAILPOINTS = (BEFORE_DECISION_FSYNC, AFTER_DECISION_FSYNC, DURING_RECOVERY)
# fault -> weight
FAULTS = {
    "client sigkill": 30,
    "coordinator sigkill": 10,
    "postgresql sigkill": 7,
    "mariadb sigkill": 7,
    "connection cut": 14,
}


@pytest.fixture
def bank(pg, maria, pg_config, maria_config, tmp_path) -> Iterator[Bank]:
    bank = Bank(pg, maria, pg_config, maria_config, tmp_path / "bank", accounts=50)
    yield bank
    bank.close()


class Run:
    """The randomized run: who is alive, what was killed, and the schedule's random source."""

    def __init__(self, bank: Bank, coordinator: CoordinatorProcess, seed: int):
        self.bank = bank
        self.coordinator = coordinator
        self.rng = random.Random(seed)
        self.seed = seed
        self.kills: collections.Counter[str] = collections.Counter()
        self.cuts = 0
        self.checkpoints = 0
        self.workers: list[Worker] = []
        self._ours: set[int] = set()  # pids we SIGKILLed (the others died at a failpoint)
        self._coordinator_killed_by_us = False
        self._coordinator_armed = False
        self._coordinator_hits = 0  # failpoint hits in its output so far

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    # -- clients ---------------------------------------------------------------------------

    def spawn_worker(self) -> None:
        failpoints = ""
        if self.rng.random() < 0.5:
            failpoints = self.rng.choice(CLIENT_FAILPOINTS)
        worker = self.bank.worker(
            self.coordinator,
            failpoints=failpoints,
            transfers=1_000_000,
            threads=2,
            timeout=2.0,
            seed=self.rng.randrange(1 << 30),
        )
        self.workers.append(worker)

    def reap_workers(self) -> None:
        """Replace every client that died; one that died at its failpoint counts as a kill."""
        for worker in [w for w in self.workers if not w.is_running()]:
            self.workers.remove(worker)
            if worker.pid not in self._ours:
                code = worker.wait_exit(1)
                assert code == -9, f"seed {self.seed}: a client exited {code}:\n{worker.output}"
                self.kills[f"client at {worker.failpoints}"] += 1
        while len(self.workers) < WORKERS:
            self.spawn_worker()

    def kill_worker(self, counted: bool = True) -> None:
        running = [w for w in self.workers if w.is_running()]
        if running:
            victim = self.rng.choice(running)
            self._ours.add(victim.pid)
            victim.kill()
            if counted:
                self.kills["client sigkill"] += 1

    # -- the coordinator -------------------------------------------------------------------

    def restart_coordinator(self, *, arm: bool) -> None:
        failpoints = ""
        if arm and self.rng.random() < 0.35:
            failpoints = self.rng.choice(COORDINATOR_FAILPOINTS)
        self._coordinator_armed = bool(failpoints)
        for _ in range(5):
            try:
                self.coordinator.restart(failpoints=failpoints)
                return
            except RuntimeError:  # armed for recovery, it may die before its start line
                self.note_coordinator_death()
                failpoints, self._coordinator_armed = "", False
        raise AssertionError(f"seed {self.seed}: the coordinator does not start")

    def note_coordinator_death(self) -> None:
        """The coordinator is down: we killed it, or it must have died at its failpoint."""
        hits = self.coordinator.output.count("failpoint coordinator.")
        if not self._coordinator_killed_by_us:
            output = self.coordinator.output[-3000:]
            assert hits > self._coordinator_hits, f"seed {self.seed}: it died:\n{output}"
            self.kills["coordinator at failpoint"] += 1
        self._coordinator_hits = hits
        self._coordinator_killed_by_us = False

    def watch_coordinator(self) -> None:
        if not self.coordinator.is_running():
            self.note_coordinator_death()
            self.restart_coordinator(arm=self.rng.random() < 0.35)

    # -- one fault -------------------------------------------------------------------------

    def fault(self) -> None:
        (name,) = self.rng.choices(list(FAULTS), weights=list(FAULTS.values()))
        if name == "client sigkill":
            self.kill_worker()
        elif name == "coordinator sigkill":
            self._coordinator_killed_by_us = True
            self.coordinator.kill()
            self.kills[name] += 1
            self.note_coordinator_death()
            self.restart_coordinator(arm=True)
        elif name in ("postgresql sigkill", "mariadb sigkill"):
            server = self.bank.pg if name.startswith("postgresql") else self.bank.maria
            server.kill()
            self.kills[name] += 1
            server.restart()
        else:
            proxies = [self.bank.pg_proxy, self.bank.maria_proxy]
            victims = self.rng.sample(proxies, self.rng.randint(1, 2))
            partition = self.rng.random() < 0.3  # and refuse reconnects for a moment
            for proxy in victims:
                if partition:
                    proxy.block()
                proxy.cut()
            if partition:
                time.sleep(self.rng.uniform(0.1, 0.5))
                for proxy in victims:
                    proxy.unblock()
            self.cuts += 1

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Stop every client, let recovery finish, check every invariant, start again."""
        for worker in self.workers:
            self._ours.add(worker.pid)
            worker.kill()
        self.workers.clear()
        if self._coordinator_armed or not self.coordinator.is_running():
            self._coordinator_killed_by_us = self.coordinator.is_running()
            self.coordinator.kill()
            self.note_coordinator_death()
            self.restart_coordinator(arm=False)
        passes = self.bank.recover(self.coordinator)
        violations = self.bank.violations(self.coordinator)
        self.checkpoints += 1
        print(
            f"checkpoint {self.checkpoints}: {self.total_kills} kills, {self.cuts} cuts, "
            f"{self.bank.journal().counts()}, recovered in {passes} passes"
        )
        assert violations == [], f"seed {self.seed}, checkpoint {self.checkpoints}: {violations}"


def test_randomized_mixed_kills_keep_every_bank_invariant(
    bank: Bank, coordinator_factory: Callable[..., CoordinatorProcess]
) -> None:
    print(f"crash seed {SEED} (set TWOSTEP_CRASH_SEED to replay another)")
    started = time.monotonic()
    coordinator = coordinator_factory(bank.coordinator_dir, args=bank.coordinator_args(**RECOVERY))
    run = Run(bank, coordinator, SEED)
    try:
        checked_at = 0  # kills at the last checkpoint
        while run.total_kills < KILLS:
            run.reap_workers()
            run.watch_coordinator()
            time.sleep(run.rng.uniform(0.1, 0.6))
            run.fault()
            if run.total_kills - checked_at >= CHECKPOINT_EVERY:
                run.checkpoint()
                checked_at = run.total_kills
            elapsed = time.monotonic() - started
            assert elapsed < BUDGET_S, f"seed {SEED}: {run.total_kills} kills in {elapsed:.0f} s"
        run.checkpoint()
    finally:  # for a post-mortem: every run of the coordinator, in order
        (bank.directory / "coordinator.log").write_text(coordinator.output)
    elapsed = time.monotonic() - started
    counts = bank.journal().counts()
    errors = coordinator.output.count("level=ERROR")
    print(f"seed {SEED}: {run.total_kills} kills {dict(run.kills)}, {run.cuts} cuts, {counts}")
    print(
        f"{run.checkpoints} checkpoints, 0 violations, {elapsed:.1f} s, {errors} coordinator errors"
    )
    assert counts.get("committed", 0) > 100, f"seed {SEED}: too little work got done: {counts}"
