"""The Admin gRPC service: what is in doubt, and how an operator ends it (admin.proto).

Who may call it is `_callers`' business (the admin token, or a client certificate with an admin
name; every call is in the audit trail). The admin token comes from the settings
(`admin_token`, `admin_token_file`, env `TWOSTEP_ADMIN_TOKEN`); without one, a random token is
generated at first start into `<data_dir>/admin-token` (mode 0600) and reused afterwards.

A call that touches a database (ShowTransaction, ScanResource, Resolve) runs it in the
resource's lane (`recovery.lanes`) and waits for it only until shortly before the call's
deadline (at most `_PASS_WAIT_S` without one): a database that does not answer is shown as
stuck, and the worker thread is free again in time, whatever the database does.

Handlers stay thin: the rules live in the decision log (`resolve`) and in recovery (scans,
finishing branches); `_service._answering` turns `BadRequest` into INVALID_ARGUMENT and
`LogUnavailable` into UNAVAILABLE, as for the Coordinator service. No lock here: the servicer
holds no mutable state.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from twostep.client import InvalidIdentifier
from twostep.client.tpc import Xid, parse_gtrid, validate_resource_name
from twostep.client.txn_states import TxnState
from twostep.v1 import admin_pb2 as _admin_pb
from twostep.v1 import admin_pb2_grpc as _admin_pb_grpc
from twostep.v1 import coordinator_pb2 as _pb

from . import _inspect, _wire
from ._callers import current_caller, read_token_file
from ._config import ConfigError, Settings
from ._registry import Resource, ResourceRegistry
from ._service import _answering
from ._txn_view import Listed, TxnView
from .log import BranchRecord, DecisionLog, Note, Resolution, State
from .recovery import Action, Recovery, Report, Stuck

__all__ = ["ADMIN_SERVICE_NAME", "ADMIN_TOKEN_FILE_NAME", "AdminServicer", "load_admin_token"]

log = logging.getLogger("twostep.coordinator.admin")

T = TypeVar("T")

ADMIN_SERVICE_NAME = _admin_pb.DESCRIPTOR.services_by_name["Admin"].full_name  # twostep.v1.Admin
ADMIN_TOKEN_FILE_NAME = "admin-token"
#: Trailing metadata naming the resource when UNAVAILABLE means "a database is unreachable",
#: not the coordinator (admin.proto, ScanResource).
UNREACHABLE_RESOURCE_KEY = "twostep-unreachable-resource"
MAX_REPORTED_ACTIONS = 1000  # actions in one reply; the rest are counted in omitted_actions
_PASS_WAIT_S = 60.0  # how long Recover / Resolve wait for a pass already running


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the token ---------------------------------------------------------------------------------


def load_admin_token(settings: Settings) -> tuple[str, Path | None]:
    """(token, the file it is in; None when it is set directly). Generates one if none is set.

    Raises `ConfigError` for an unusable token file, `OSError` if the generated one cannot
    be written.
    """
    if settings.admin_token:
        return settings.admin_token, None
    if settings.admin_token_file is not None:
        path = settings.admin_token_file
        try:
            return read_token_file(path, "admin_token_file"), path.resolve()
        except FileNotFoundError:
            raise ConfigError(f"admin_token_file {path} does not exist") from None
    path = Path(settings.data_dir) / ADMIN_TOKEN_FILE_NAME
    try:
        return read_token_file(path, "admin_token_file"), path.resolve()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use that one
        return read_token_file(path, "admin_token_file"), path.resolve()
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return token, path.resolve()  # the start line names the file


# -- the service -------------------------------------------------------------------------------


class AdminServicer(_admin_pb_grpc.AdminServicer):
    def __init__(
        self,
        decision_log: DecisionLog,
        recovery: Recovery,
        registry: ResourceRegistry,
        *,
        cluster_id: str,
        clock: Callable[[], int] = _now_ms,
    ):
        self._log = decision_log
        self._recovery = recovery
        self._registry = registry
        self._cluster = cluster_id
        self._clock = clock
        self._view = TxnView(decision_log, recovery)

    @_answering
    def Status(
        self, request: _admin_pb.StatusRequest, context: grpc.ServicerContext
    ) -> _admin_pb.StatusResponse:
        counts = self._view.counts()
        return _admin_pb.StatusResponse(
            cluster_id=self._cluster,
            active=counts.by_state[TxnState.ACTIVE],
            committed_incomplete=counts.by_state[TxnState.COMMITTING],
            aborted_incomplete=counts.by_state[TxnState.ABORTING],
            orphaned=counts.by_state[TxnState.ORPHANED],
            in_doubt=counts.in_doubt,
            blocked=counts.blocked,
            resources=[
                _admin_pb.ResourceStatus(
                    name=r.name,
                    dialect=r.dialect,
                    target=r.target,
                    reachable=bool(r.reachable),
                    prepared=r.prepared,
                    error=r.error if r.reachable is not None else "not scanned yet",
                )
                for r in self._recovery.resource_states()
            ],
            last_recovery=_report_to_pb(self._recovery.last_report()),
            recovery_counters=self._recovery.counters(),
        )

    @_answering
    def ListTransactions(
        self, request: _admin_pb.AdminListRequest, context: grpc.ServicerContext
    ) -> _admin_pb.AdminListResponse:
        limit = request.limit or _wire.MAX_LIST_LIMIT
        if limit > _wire.MAX_LIST_LIMIT:
            raise _wire.BadRequest(f"limit: {limit} is more than {_wire.MAX_LIST_LIMIT}")
        older = request.older_than_s
        cutoff = self._clock() - older * 1000 if older else None
        listed = self._view.list(request.state, cutoff, limit)
        return _admin_pb.AdminListResponse(transactions=[_listed_to_pb(t) for t in listed])

    @_answering
    def ShowTransaction(
        self, request: _admin_pb.ShowTransactionRequest, context: grpc.ServicerContext
    ) -> _admin_pb.TransactionDetail:
        info = _wire.gtrid_of(request.gtrid, _wire.Scope(self._cluster, current_caller()))
        give_up = time.monotonic() + _wait_for(context)
        record = self._log.get(info.gtrid)
        found, _errors = self._recovery.find_branches(info.gtrid, _left(give_up))
        branches = list(record.branches) if record else []
        named = {b.resource for b in branches}
        branches += [b for b in found if b.resource not in named]
        if record is None and not branches:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no transaction {info.gtrid} in the log, and no branch of it is prepared "
                "on a registered resource",
            )
        if record is not None:
            transaction = _wire.transaction_to_pb(record)
        else:  # known only from the databases: an orphan the log never heard of
            transaction = _pb.Transaction(
                gtrid=info.gtrid,
                state=_pb.TRANSACTION_STATE_UNSPECIFIED,
                deadline_unix_ms=info.deadline_unix_s * 1000,
                branches=[_branch_to_pb(b) for b in branches],
            )
        pending = self._recovery.pending(info.gtrid)
        states = []
        for branch in branches:
            shown = self._on_database(info.gtrid, branch, _left(give_up))
            why = pending.get(branch.resource)
            if why and self._registry.get(branch.resource) is None:
                shown = why  # says "not registered" already, and what to do
            elif why:
                shown += f"; recovery: {why}"
            states.append(_admin_pb.BranchState(branch=_branch_to_pb(branch), on_database=shown))
        state, blocked = self._view.show(info.gtrid, record)
        return _admin_pb.TransactionDetail(
            transaction=transaction,
            branches=states,
            notes=[_note_line(n) for n in self._log.notes(info.gtrid)],
            state=state,
            blocked=blocked,
        )

    def _on_database(self, gtrid: str, branch: BranchRecord, timeout: float) -> str:
        resource = self._registry.get(branch.resource)
        if resource is None:
            return "not registered in the coordinator's config"
        try:
            xid = Xid.of(gtrid, branch.bqual)
        except InvalidIdentifier as exc:
            return f"unreachable: {exc}"
        try:
            prepared = self._recovery.on_resource(
                resource.name, _on_session, resource, resource.ops.is_prepared, xid, timeout=timeout
            )
        except Stuck as exc:
            return f"stuck: {exc}"
        except Exception as exc:
            return f"unreachable: {resource.redact(exc)}"
        return "prepared" if prepared else "not prepared"

    @_answering
    def ScanResource(
        self, request: _admin_pb.ScanResourceRequest, context: grpc.ServicerContext
    ) -> _admin_pb.ScanResourceResponse:
        try:
            validate_resource_name(request.resource)
        except InvalidIdentifier as exc:
            raise _wire.BadRequest(f"resource: {exc}") from None
        resource = self._registry.get(request.resource)
        if resource is None:
            known = ", ".join(self._registry.names()) or "none"
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no resource {request.resource!r} is registered (registered: {known})",
            )
        try:
            listed = self._recovery.on_resource(
                resource.name,
                _on_session,
                resource,
                lambda session: _inspect.prepared_xids(resource, session),
                timeout=_wait_for(context),
            )
        except Exception as exc:
            # UNAVAILABLE alone would read as "coordinator unreachable" to a client.
            context.set_trailing_metadata(((UNREACHABLE_RESOURCE_KEY, resource.name),))
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the coordinator cannot scan {resource.name}: {resource.redact(exc)}",
            )
        return _admin_pb.ScanResourceResponse(
            resource=resource.name, xids=[self._scanned(raw) for raw in listed]
        )

    def _scanned(self, raw: _inspect.RawXid) -> _admin_pb.ScannedXid:
        if raw.xid is None:
            return _admin_pb.ScannedXid(raw=raw.raw, owner="foreign")
        info = parse_gtrid(raw.xid.gtrid)
        scanned = _admin_pb.ScannedXid(
            raw=raw.raw,
            gtrid=raw.xid.gtrid,
            bqual=raw.xid.bqual,
            deadline_unix_ms=info.deadline_unix_s * 1000,
        )
        if info.cluster != self._cluster:
            scanned.owner = "other cluster"
            return scanned
        scanned.owner = "ours"
        record = self._log.get(raw.xid.gtrid)
        if record is not None:
            scanned.logged_state = _STATES[record.state]
        return scanned

    @_answering
    def Recover(
        self, request: _admin_pb.RecoverRequest, context: grpc.ServicerContext
    ) -> _admin_pb.RecoveryReport:
        try:
            report = self._recovery.run_pass(
                dry_run=request.dry_run, eager=True, wait=_wait_for(context)
            )
        except TimeoutError:
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "a recovery pass is running and did not end in time"
            )
        return _report_to_pb(report)

    @_answering
    def Resolve(
        self, request: _admin_pb.ResolveRequest, context: grpc.ServicerContext
    ) -> _admin_pb.ResolveResponse:
        info = _wire.gtrid_of(request.gtrid, _wire.Scope(self._cluster, current_caller()))
        who = f"{context.peer()} ({current_caller().name})"
        verb = "commit" if request.commit else "abort"
        reason = request.reason.strip()
        problem = ""
        if not reason:
            problem = "required: say why the operator decides this (kept in the audit record)"
        else:
            problem = _wire.reason_problem(reason) or ""
        if problem:
            text = f"resolve {verb} by {who}: refused: reason {problem.split(':')[0]}"
            self._log.add_notes([Note(info.gtrid, self._clock(), "resolve", text)])
            raise _wire.BadRequest(f"reason: {problem}")

        found, errors = self._recovery.find_branches(info.gtrid, _wait_for(context))
        if not (found or errors or request.force) and self._log.get(info.gtrid) is None:
            # Nowhere: most likely a mistyped id. Recording a decision for it would tell the
            # operator "done" while the transaction they meant stays in doubt.
            log.warning("resolve of an unknown gtrid refused", extra={"gtrid": info.gtrid})
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no transaction {info.gtrid}: the decision log has no row of it and no "
                "registered resource has a branch of it prepared (check the id; --force "
                "records the decision anyway)",
            )
        resolved = self._log.resolve(
            Resolution(
                gtrid=info.gtrid,
                commit=request.commit,
                reason=reason,
                force=request.force,
                branches=tuple(found),
                fallback_deadline_ms=info.deadline_unix_s * 1000,
                who=who,
            )
        )
        extra = {"gtrid": info.gtrid, "resolve": verb, "force": request.force, "peer": who}
        if not resolved.accepted:
            log.warning("resolve refused", extra={**extra, "why": resolved.why})
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, resolved.why)
        assert resolved.decision is not None
        was = resolved.previous.value if resolved.previous else "unknown"
        log.warning("resolve accepted", extra={**extra, "was": was})
        try:
            report = self._recovery.settle(info.gtrid, wait=_wait_for(context))
            actions = report.actions
        except TimeoutError:
            why = "waiting: a recovery pass is running; recovery finishes the branches"
            actions = [Action(info.gtrid, "", "settle", why)]
        actions = [*(Action(info.gtrid, "", "scan", f"failed: {e}") for e in errors), *actions]
        return _admin_pb.ResolveResponse(
            decision=_wire.decision_to_pb(resolved.decision),
            actions=[_action_to_pb(a) for a in actions[:MAX_REPORTED_ACTIONS]],
        )


# -- replies -----------------------------------------------------------------------------------

_STATES = {
    State.ACTIVE: _pb.TRANSACTION_STATE_ACTIVE,
    State.COMMITTED: _pb.TRANSACTION_STATE_COMMITTED,
    State.ABORTED: _pb.TRANSACTION_STATE_ABORTED,
}


def _on_session(resource: Resource, query: Callable[..., T], *args: Any) -> T:
    """`query(session, *args)` on a pooled session of `resource` (discarded if it fails)."""
    session = resource.connection.acquire()
    try:
        result = query(session, *args)
    except BaseException:
        resource.connection.release(session, discard=True)
        raise
    resource.connection.release(session)
    return result


def _left(give_up: float) -> float:
    return max(0.0, give_up - time.monotonic())


def _wait_for(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return _PASS_WAIT_S
    return max(0.0, min(_PASS_WAIT_S, remaining - 0.5))


def _branch_to_pb(branch: BranchRecord) -> _pb.Branch:
    return _pb.Branch(
        resource=branch.resource,
        bqual=branch.bqual,
        dialect=branch.dialect,
        session_id=branch.session_id,
    )


def _listed_to_pb(listed: Listed) -> _admin_pb.ListedTransaction:
    record = listed.record
    if listed.logged:
        transaction = _wire.transaction_to_pb(record)
    else:  # an orphan the log never heard of, as ShowTransaction shows one
        transaction = _pb.Transaction(
            gtrid=record.gtrid,
            state=_pb.TRANSACTION_STATE_UNSPECIFIED,
            deadline_unix_ms=record.deadline_ms,
            branches=[_branch_to_pb(b) for b in record.branches],
        )
    return _admin_pb.ListedTransaction(
        transaction=transaction, state=listed.state, blocked=listed.blocked
    )


def _note_line(note: Note) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(note.at_ms / 1000))
    return f"{at}.{note.at_ms % 1000:03d}Z {note.kind}: {note.text}"


def _action_to_pb(action: Action) -> _admin_pb.RecoveryAction:
    return _admin_pb.RecoveryAction(
        gtrid=action.gtrid, resource=action.resource, action=action.action, result=action.result
    )


def _report_to_pb(report: Report | None) -> _admin_pb.RecoveryReport:
    if report is None:
        return _admin_pb.RecoveryReport()
    return _admin_pb.RecoveryReport(
        started_unix_ms=report.started_ms,
        finished_unix_ms=report.finished_ms,
        dry_run=report.dry_run,
        actions=[_action_to_pb(a) for a in report.actions[:MAX_REPORTED_ACTIONS]],
        errors=report.errors,
        omitted_actions=max(0, len(report.actions) - MAX_REPORTED_ACTIONS),
        in_doubt=len(report.in_doubt),
    )
