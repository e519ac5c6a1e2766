"""Acting on a plan: decide the orphans' ABORT, run the steps, record what happened.

In the plan's order:
1. Its findings are reported (and those that block a branch logged).
Only the transactions the log lets this coordinator take (`DecisionLog.take_work`) are worked
on: replicas sharing a PostgreSQL log split the work so two never drive one branch at once.

2. Each orphan's ABORT is decided first, durably (`decide` with commit=False, so a late
   Commit is answered ABORTED). Only if ABORT is then the decision in force are its branches
   rolled back; if a Commit won the race, that COMMIT stands and its client finishes them.
3. The steps run in parallel, each resource's share spread over `workers_per_resource` sessions in
   its lane (`lanes`); a pass waits for them at most its patience, and a step still running then, or
   on a stuck resource, fails this pass (its call goes on; the next pass looks again). A branch is
   finished with the client's `finish_prepared` (one implementation of phase 2 for both sides). A
   branch no longer prepared is AS_ASKED, OTHER_WAY (a heuristic outcome: a note on the transaction)
   or UNVERIFIED (noted for a COMMIT); a gone branch to verify asks its database how its transaction
   ended (`BranchOps.ended_as`).
4. MySQL/MariaDB: "unknown xid" while XA RECOVER still lists the xid means a live session
   holds the branch. It is reported blocked with the session id the client registered (Begin,
   Enlist, Commit or Abort), confirmed in INNODB_TRX (`_inspect`); past the gtrid's deadline
   + `kill_grace_ms`, and only if `kill_live_sessions`, that session is KILLed and the branch
   finished.
5. The outcome of each step is reported, logged and counted; a failed branch backs off
   (`memory`); notes are made durable before the transactions whose steps are all done are
   marked completed (the same end record as the client's Ack).

A dry run only reports what would be done (`planned`): no decision, no statement, no memory.

Failpoint `coordinator.during_recovery` (`twostep.client.tpc.failpoints`): right after a pass
finished a branch (its COMMIT or ROLLBACK PREPARED returned), before the pass records anything
about it; armed to kill, the first branch finished in a pass is the last one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twostep.client import TwostepError
from twostep.client.tpc import BranchOps, Ended, Xid, ended_by_status, finish_prepared
from twostep.client.tpc.failpoints import DURING_RECOVERY, failpoint

from .. import _inspect
from .._registry import Resource, ResourceRegistry
from ..log import Ack, DecisionLog, LogUnavailable, Note, State
from .lanes import Lanes, Stuck
from .memory import PassMemory
from .plan import OrphanAbort, Plan, Step, TxnPlan
from .report import (
    COMMIT,
    COMPLETE,
    DECIDE_ABORT,
    DONE,
    KILL,
    PLANNED,
    ROLLBACK,
    VERIFY,
    Action,
    ActionLog,
    Report,
    Status,
    iso,
    log,
)

__all__ = ["WORKERS_PER_RESOURCE", "Actor"]

WORKERS_PER_RESOURCE = 4  # sessions finishing branches on one resource at once
_KILL_PATIENCE_S = 2.0  # after a KILL, how long to retry finishing the detached branch
_COUNTED = {COMMIT: "committed", ROLLBACK: "rolled_back", VERIFY: "verified"}


@dataclass
class _Run:
    """One step being run, and what came of it (set by the worker that ran it)."""

    step: Step
    resource: Resource
    result: str = ""
    notes: list[Note] = field(default_factory=list)
    killed: int = 0  # the session KILLed to detach the branch


@dataclass
class _Branch:
    """A prepared branch as `finish_prepared` wants it (its PreparedBranch protocol)."""

    connection: Any
    ops: BranchOps
    xid: Xid
    transaction_id: int | None = None
    session: Any = None


class Actor:
    """Runs plans (see the module docstring); used under the pass lock (`loop`)."""

    def __init__(
        self,
        *,
        decision_log: DecisionLog,
        registry: ResourceRegistry,
        memory: PassMemory,
        status: Status,
        lines: ActionLog,
        lanes: Lanes,
        clock: Callable[[], int],
        stopping: threading.Event,
        interval_ms: int,
        kill_grace_ms: int,
        kill_live_sessions: bool,
        workers_per_resource: int,
    ):
        self._log = decision_log
        self._registry = registry
        self._memory = memory
        self._status = status
        self._lines = lines
        self._lanes = lanes
        self._clock = clock
        self._stopping = stopping
        self._interval_ms = interval_ms
        self._kill_grace_ms = kill_grace_ms
        self._kill = kill_live_sessions
        self._workers = workers_per_resource

    def act(self, plan: Plan, report: Report, *, dry_run: bool, patience: float) -> set[str]:
        """Run `plan` (a dry run: report it), waiting at most `patience` seconds for the
        steps; the gtrids of the transactions worked on."""
        txns = dict(plan.txns)
        for finding in plan.findings:
            report.actions.append(finding.action)
            if finding.logged and not dry_run:
                self._line(finding.action)
        if dry_run:
            for abort in plan.aborts:
                report.actions.append(Action(abort.proposal.gtrid, "", DECIDE_ABORT, PLANNED))
                _add_orphan(txns, abort)
            for txn in txns.values():
                report.actions += [Action(s.gtrid, s.resource, s.verb, PLANNED) for s in txn.steps]
            for txn in txns.values():
                if txn.complete and not txn.blocked:
                    report.actions.append(Action(txn.gtrid, "", COMPLETE, PLANNED))
            return set(txns)
        wanted = sorted({*txns, *(abort.proposal.gtrid for abort in plan.aborts)})
        try:
            with self._log.take_work(wanted) as mine:
                for abort in self._decide_aborts(
                    [a for a in plan.aborts if a.proposal.gtrid in mine], report
                ):
                    _add_orphan(txns, abort)
                work = [
                    (txn, [self._run_of(s) for s in txn.steps])
                    for txn in txns.values()
                    if txn.gtrid in mine
                ]
                self._execute([run for _, runs in work for run in runs], patience)
                self._conclude(work, report)
        except LogUnavailable as exc:
            report.errors.append(f"decision log: {exc}")
            return set()
        if len(mine) < len(wanted):  # the rest is another replica's (or done) in this pass
            log.debug(
                "recovery work left to other replicas", extra={"gtrids": len(wanted) - len(mine)}
            )
        return mine

    # -- 2. orphans ----------------------------------------------------------------------------

    def _decide_aborts(self, aborts: list[OrphanAbort], report: Report) -> list[OrphanAbort]:
        """Decide ABORT for the orphans; those for which ABORT is the decision in force."""
        if not aborts:
            return []
        try:
            decisions = self._log.decide([a.proposal for a in aborts])
        except LogUnavailable as exc:
            for a in aborts:
                result = f"failed: the decision log is unavailable ({exc}); retrying"
                report.actions.append(Action(a.proposal.gtrid, "", DECIDE_ABORT, result))
                report.in_doubt.add(a.proposal.gtrid)
            return []
        aborted = []
        for abort, decision in zip(aborts, decisions, strict=True):
            if decision.state is not State.ABORTED:
                # A Commit came first: that decision stands, its client finishes the branches.
                result = f"waiting: decided {decision.state.value} meanwhile"
                report.actions.append(Action(decision.gtrid, "", DECIDE_ABORT, result))
                continue
            self._status.count("decided_abort")
            if decision.taken:
                report.decisions.append(decision)
            action = Action(decision.gtrid, "", DECIDE_ABORT, DONE)
            self._line(action)
            report.actions.append(action)
            aborted.append(abort)
        return aborted

    # -- 3. and 4. the steps -------------------------------------------------------------------

    def _run_of(self, step: Step) -> _Run:
        resource = self._registry.get(step.resource)
        assert resource is not None, "the plan names only registered resources in steps"
        return _Run(step, resource)

    def _execute(self, runs: list[_Run], patience: float) -> None:
        """Run the steps, each resource's share spread over a few sessions of its lane, in
        parallel; those not run within `patience` seconds fail (see the module docstring)."""
        by_resource: dict[str, list[_Run]] = collections.defaultdict(list)
        for run in runs:
            by_resource[run.step.resource].append(run)
        given_up = threading.Event()  # set: the chunks still running start no more steps
        futures = []
        for name, items in by_resource.items():
            for i in range(min(self._workers, len(items))):
                chunk = items[i :: self._workers]
                try:
                    futures.append(self._lanes.submit(name, self._run_chunk, chunk, given_up))
                except Stuck as exc:
                    for run in chunk:
                        run.result = f"failed: {name} is stuck ({exc}); retrying"
        concurrent.futures.wait(futures, timeout=patience)
        given_up.set()
        for run in runs:
            if not run.result:  # not run, or its call is still waiting for an answer
                why = f"no answer within {patience:.1f} s"
                run.result = f"failed: {run.step.resource} is stuck ({why}); retrying"

    def _run_chunk(self, chunk: list[_Run], given_up: threading.Event) -> None:
        for run in chunk:
            if self._stopping.is_set():
                run.result = "failed: the coordinator is stopping"
                continue
            if given_up.is_set():
                return  # the pass reports the rest
            try:
                self._run(run)
            except Exception as exc:  # a branch's failure never stops the others
                run.result = f"failed: {run.resource.redact(exc)}"

    def _run(self, run: _Run) -> None:
        if run.step.verify:
            self._verify(run)
            return
        step, resource = run.step, run.resource
        branch = _Branch(resource.connection, resource.ops, step.xid, step.pg_txid)
        try:
            ended = finish_prepared(branch, commit=step.commit, patience=0.0, quiet=True)
        except TwostepError as exc:
            run.result = f"failed: {resource.redact(exc)}"
            return
        if ended is Ended.STILL_PREPARED and resource.dialect == "mysql":
            found = self._live_owner(run, branch)
            if found is None:
                return  # run.result says why
            ended = found
        self._finished(run, ended)

    def _finished(self, run: _Run, ended: Ended) -> None:
        step = run.step
        decision = "COMMIT" if step.commit else "ABORT"
        where = f"branch {step.xid.bqual} on {step.resource}"
        if ended is Ended.STILL_PREPARED:
            run.result = "failed: still prepared (busy, or the session was lost); retrying"
        elif ended is Ended.AS_ASKED:
            run.result = run.result or DONE
            failpoint(DURING_RECOVERY)  # a branch is finished, the pass goes on
        elif ended is Ended.UNVERIFIED:
            text = (
                f"{where} was no longer prepared, and its database cannot tell whether it was "
                f"committed or rolled back (decision: {decision})"
            )
            run.result = f"{DONE} (unverified)"
            run.notes.append(Note(step.gtrid, self._clock(), "unverified", text))
        else:
            way = "rolled back" if step.commit else "committed"
            text = f"{where} was found {way} although the decision is {decision}"
            run.result = f"heuristic: {text}"
            run.notes.append(Note(step.gtrid, self._clock(), "heuristic", text))

    def _verify(self, run: _Run) -> None:
        connection = run.resource.connection
        session = connection.acquire()
        try:
            status = run.resource.ops.ended_as(session, run.step.pg_txid)
        except BaseException:
            connection.release(session, discard=True)
            raise
        connection.release(session)
        if status == "in progress":  # prepared again? impossible for one gid; look next pass
            run.result = "failed: its transaction is still in progress; retrying"
        else:
            self._finished(run, ended_by_status(status, run.step.commit))

    def _live_owner(self, run: _Run, branch: _Branch) -> Ended | None:
        """A MySQL branch that is still listed: is a live session holding it? KILL it if due.

        Returns finish_prepared's answer after a KILL, or None with `run.result` saying why.
        """
        step, resource = run.step, run.resource
        session = resource.connection.acquire()
        try:
            if not resource.ops.is_prepared(session, step.xid):
                resource.connection.release(session)
                return Ended.AS_ASKED  # finished meanwhile, by the session that held it
            sid = step.session_id
            if not sid:
                run.result = "blocked: a live session holds it; the client did not report which"
                resource.connection.release(session)
                return None
            if not _inspect.session_holds_transaction(session, sid):
                run.result = f"failed: still attached, but session {sid} holds no transaction"
                resource.connection.release(session)
                return None
            due = step.deadline_ms + self._kill_grace_ms
            if not self._kill:
                run.result = f"blocked: live session {sid} holds it (kill_live_sessions is off)"
            elif self._clock() < due:
                run.result = f"blocked: live session {sid} holds it; KILL due at {iso(due)}"
            if run.result:
                resource.connection.release(session)
                return None
            killed = _inspect.kill_session(session, sid)
        except BaseException:
            resource.connection.release(session, discard=True)
            raise
        resource.connection.release(session)
        run.killed = sid
        what = f"KILLed session {sid}, which held the branch past deadline + kill grace"
        if not killed:
            what = f"session {sid} held the branch past deadline + kill grace; it ended first"
        run.notes.append(Note(step.gtrid, self._clock(), "kill", f"{resource.name}: {what}"))
        ended = finish_prepared(branch, commit=step.commit, patience=_KILL_PATIENCE_S)
        if ended is Ended.STILL_PREPARED:
            run.result = f"failed: still prepared after the KILL of session {sid}; retrying"
        else:
            run.result = f"{DONE} (after KILL of session {sid})"
        return ended

    # -- 5. conclude ---------------------------------------------------------------------------

    def _conclude(self, work: list[tuple[TxnPlan, list[_Run]]], report: Report) -> None:
        now = self._clock()
        notes, acks = [], []
        for txn, runs in work:
            unfinished = False
            for run in runs:
                step = run.step
                if run.killed:
                    self._status.count("killed")
                    report.actions.append(Action(step.gtrid, step.resource, KILL, DONE))
                    self._lines.action(step.gtrid, step.resource, KILL, f"session {run.killed}")
                action = Action(step.gtrid, step.resource, step.verb, run.result)
                report.actions.append(action)
                self._line(action)
                notes.extend(run.notes)
                if run.result.startswith(DONE):
                    self._memory.succeeded(step.key)
                    self._status.count(_COUNTED[step.verb])
                    self._memory.forget_txid(step.resource, step.xid)
                elif run.result.startswith("heuristic"):
                    self._status.count("heuristic")
                    self._memory.forget_txid(step.resource, step.xid)
                elif run.result.startswith("blocked"):
                    unfinished = True
                    self._status.count("blocked")
                    if self._lines.first_time(step.gtrid, step.resource, run.result):
                        text = f"{step.resource}: {run.result}"
                        notes.append(Note(step.gtrid, now, "blocked", text))
                else:
                    unfinished = True
                    self._status.count("failed")
                    self._memory.fail(step.key, now, self._interval_ms)
            if unfinished or txn.blocked:
                report.in_doubt.add(txn.gtrid)
            elif txn.complete:
                acks.append(Ack(txn.gtrid))
                action = Action(txn.gtrid, "", COMPLETE, DONE)
                report.actions.append(action)
                self._line(action)
        try:
            self._log.add_notes(notes)  # durable before the transactions are marked completed
            if acks:
                self._log.record_acks(acks)
                self._log.flush()  # a pass's report is what the log says once it returns
                self._status.count("completed", len(acks))
        except LogUnavailable as exc:
            log.warning("recovery could not write to the decision log", extra={"error": exc})
            report.errors.append(f"decision log: {exc}")

    def _line(self, action: Action) -> None:
        self._lines.action(action.gtrid, action.resource, action.action, action.result)


def _add_orphan(txns: dict[str, TxnPlan], abort: OrphanAbort) -> None:
    """The rollbacks of an aborted orphan join the pass's transactions (the plan unchanged)."""
    gtrid = abort.proposal.gtrid
    known = txns.get(gtrid, TxnPlan(gtrid, abort.complete))
    txns[gtrid] = replace(known, steps=[*known.steps, *abort.steps])
