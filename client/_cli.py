"""`twostep`: the admin CLI. See and resolve in-doubt transactions through the coordinator.

Tables for people, `--json` for scripts. Exit codes:
  0 done; 1 refused or failed (e.g. resolve contradicting a decision without --force);
  2 usage error; 3 coordinator unreachable; 4 no such transaction or resource;
  5 missing or wrong admin token.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from twostep.v1 import admin_pb2 as _admin
from twostep.v1 import admin_pb2_grpc as _admin_grpc
from twostep.v1 import coordinator_pb2 as _pb
from twostep.v1 import coordinator_pb2_grpc as _pb_grpc

from ._channel import ChannelConfig
from ._errors import ConfigurationError
from .tpc.xid import parse_gtrid, validate_resource_name

__all__ = ["main"]

EXIT_FAILED, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_UNAUTHENTICATED = 1, 3, 4, 5
_EXIT_BY_STATUS = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_UNAUTHENTICATED,
}
_STATE_NAMES = {
    _pb.TRANSACTION_STATE_ACTIVE: "ACTIVE",
    _pb.TRANSACTION_STATE_COMMITTED: "COMMITTED",
    _pb.TRANSACTION_STATE_ABORTED: "ABORTED",
}
# --state choices: what an operator asks for, as ListTransactions filters.
_STATE_FILTERS: dict[str, tuple[list[int], bool]] = {
    "in-doubt": ([_pb.TRANSACTION_STATE_COMMITTED, _pb.TRANSACTION_STATE_ABORTED], True),
    "committing": ([_pb.TRANSACTION_STATE_COMMITTED], True),
    "active": ([_pb.TRANSACTION_STATE_ACTIVE], False),
    "committed": ([_pb.TRANSACTION_STATE_COMMITTED], False),
    "aborted": ([_pb.TRANSACTION_STATE_ABORTED], False),
}
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RPC_TIMEOUT = 30.0


def _duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number with s, m, h or d, e.g. 90s or 5m")
    return int(match[1]) * _UNITS[match[2]]


class _Context:
    def __init__(
        self, address: str, token: str | None, as_json: bool, tls: ChannelConfig | None = None
    ):
        self.address = address
        self.token = token
        self.as_json = as_json
        self.tls = tls or ChannelConfig()
        self.channel = self.tls.open(address)
        self.coordinator = _pb_grpc.CoordinatorStub(self.channel)
        self.admin = _admin_grpc.AdminStub(self.channel)
        self.console = Console()

    def metadata(self) -> list[tuple[str, str]]:
        if not self.token and self.tls.cert_file is not None:
            return []  # mutual TLS: the certificate may be an admin's (tls_admin_names)
        if not self.token:
            _fail(
                EXIT_UNAUTHENTICATED,
                "this command needs the admin token: --token, "
                "--token-file, $TWOSTEP_ADMIN_TOKEN or <data dir>/admin-token",
            )
        return [("authorization", f"Bearer {self.token}")]

    def admin_call(self, method: str, request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
        """One Admin RPC with the token; grpc errors become exit codes (see `_rpc`)."""
        metadata = self.metadata()
        with _rpc(self):
            return getattr(self.admin, method)(request, metadata=metadata, timeout=timeout)

    def emit(self, message: Any, render: Callable[[Any], None]) -> None:
        if self.as_json:
            data = json_format.MessageToDict(message, preserving_proto_field_name=True)
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            render(message)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"twostep: {message}", err=True)
    sys.exit(code)


@contextmanager
def _rpc(ctx: _Context) -> Iterator[None]:
    """The one place where grpc errors become exit codes and messages."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code()
        where = f" ({ctx.address})" if code == grpc.StatusCode.UNAVAILABLE else ""
        _fail(_EXIT_BY_STATUS.get(code, EXIT_FAILED), f"{code.name}{where}: {exc.details()}")


def _read_token(token: str | None, token_file: str | None) -> str | None:
    if token:
        return token
    candidates = [token_file] if token_file else []
    data_dir = os.environ.get("TWOSTEP_DATA_DIR", "twostep-data")
    candidates.append(str(Path(data_dir) / "admin-token"))
    for path in candidates:
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            if path == token_file:
                raise click.BadParameter(f"cannot read {path}", param_hint="--token-file") from None
    return None


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ms / 1000))


def _transactions_table(transactions: Any) -> Table:
    table = Table("gtrid", "state", "complete", "begun", "deadline", "branches", "reason")
    for t in transactions:
        table.add_row(
            t.gtrid,
            _STATE_NAMES.get(t.state, "?"),
            "yes" if t.completed else "no",
            _when(t.begun_unix_ms),
            _when(t.deadline_unix_ms),
            ", ".join(b.resource for b in t.branches),
            t.reason,
        )
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--coordinator",
    envvar="TWOSTEP_COORDINATOR",
    default="127.0.0.1:50051",
    show_default=True,
    help="Address of the coordinator (host:port). Env: TWOSTEP_COORDINATOR.",
)
@click.option(
    "--token", envvar="TWOSTEP_ADMIN_TOKEN", help="Admin token. Env: TWOSTEP_ADMIN_TOKEN."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding the admin token (default: $TWOSTEP_DATA_DIR or ./twostep-data, "
    "admin-token).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--tls-ca",
    envvar="TWOSTEP_COORDINATOR_CA",
    type=click.Path(dir_okay=False),
    help="PEM CA of the coordinator's certificate: speak TLS. Env: TWOSTEP_COORDINATOR_CA.",
)
@click.option(
    "--tls-cert",
    envvar="TWOSTEP_COORDINATOR_CERT",
    type=click.Path(dir_okay=False),
    help="PEM client certificate (mutual TLS); an admin's needs no token. "
    "Env: TWOSTEP_COORDINATOR_CERT.",
)
@click.option(
    "--tls-key",
    envvar="TWOSTEP_COORDINATOR_KEY",
    type=click.Path(dir_okay=False),
    help="PEM private key of --tls-cert. Env: TWOSTEP_COORDINATOR_KEY.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    coordinator: str,
    token: str | None,
    token_file: str | None,
    as_json: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """See and resolve in-doubt twostep transactions."""
    try:
        tls = ChannelConfig(*(Path(p) if p else None for p in (tls_ca, tls_cert, tls_key)))
        ctx.obj = _Context(coordinator, _read_token(token, token_file), as_json, tls)
    except ValueError as exc:
        raise click.UsageError(f"--tls-cert / --tls-key: {exc}") from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@click.pass_obj
def status(ctx: _Context) -> None:
    """Counts by state, in-doubt transactions, resources, the last recovery pass."""
    reply = ctx.admin_call("Status", _admin.StatusRequest())

    def render(r: Any) -> None:
        ctx.console.print(
            f"cluster [bold]{r.cluster_id}[/]: {r.active} active, "
            f"{r.committed_incomplete} committing, {r.aborted_incomplete} aborting, "
            f"[bold]{r.in_doubt} in doubt[/]"
        )
        table = Table("resource", "dialect", "target", "reachable", "prepared", "error")
        for res in r.resources:
            table.add_row(
                res.name,
                res.dialect,
                res.target,
                "yes" if res.reachable else "NO",
                str(res.prepared),
                res.error,
            )
        ctx.console.print(table)
        last = r.last_recovery
        if last.started_unix_ms:
            ctx.console.print(
                f"last recovery pass {_when(last.started_unix_ms)}: "
                f"{len(last.actions)} actions, {len(last.errors)} errors"
            )

    ctx.emit(reply, render)


@cli.command("list")
@click.option("--state", type=click.Choice(sorted(_STATE_FILTERS)), help="Only these.")
@click.option(
    "--older-than",
    type=_duration,
    default=None,
    metavar="DURATION",
    help="Only transactions begun at least this long ago (90s, 5m, 2h, 1d).",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.pass_obj
def list_(ctx: _Context, state: str | None, older_than: int | None, limit: int) -> None:
    """Transactions the coordinator knows, oldest first."""
    states, incomplete = _STATE_FILTERS[state] if state else ([], False)
    request = _pb.ListTransactionsRequest(
        states=states, incomplete_only=incomplete, older_than_s=older_than or 0, limit=limit
    )
    metadata = ctx.metadata()  # listing is for admins: it shows every client's transactions
    with _rpc(ctx):
        reply = ctx.coordinator.ListTransactions(request, metadata=metadata, timeout=_RPC_TIMEOUT)
    ctx.emit(reply, lambda r: ctx.console.print(_transactions_table(r.transactions)))


@cli.command()
@click.argument("gtrid")
@click.pass_obj
def show(ctx: _Context, gtrid: str) -> None:
    """One transaction: its decision, deadline, and each branch's state on its database."""
    _check(parse_gtrid, gtrid, "GTRID")
    reply = ctx.admin_call("ShowTransaction", _admin.ShowTransactionRequest(gtrid=gtrid))

    def render(r: Any) -> None:
        ctx.console.print(_transactions_table([r.transaction]))
        table = Table("resource", "dialect", "session", "on its database")
        for b in r.branches:
            table.add_row(
                b.branch.resource, b.branch.dialect, str(b.branch.session_id or "-"), b.on_database
            )
        ctx.console.print(table)
        for note in r.notes:
            ctx.console.print(f"note: {note}")

    ctx.emit(reply, render)


@cli.command()
@click.argument("resource")
@click.pass_obj
def scan(ctx: _Context, resource: str) -> None:
    """Prepared xids on one database, each beside what the log says of it."""
    _check(validate_resource_name, resource, "RESOURCE")
    reply = ctx.admin_call("ScanResource", _admin.ScanResourceRequest(resource=resource))

    def render(r: Any) -> None:
        table = Table("xid", "owner", "gtrid", "logged", "deadline")
        for x in r.xids:
            table.add_row(
                x.raw,
                x.owner,
                x.gtrid or "-",
                _STATE_NAMES.get(x.logged_state, "unknown"),
                _when(x.deadline_unix_ms),
            )
        ctx.console.print(table)

    ctx.emit(reply, render)


def _actions_table(actions: Any) -> Table:
    table = Table("gtrid", "resource", "action", "result")
    for a in actions:
        table.add_row(a.gtrid, a.resource, a.action, a.result)
    return table


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only say what a pass would do.")
@click.pass_obj
def recover(ctx: _Context, dry_run: bool) -> None:
    """Run one recovery pass now and report every action."""
    reply = ctx.admin_call("Recover", _admin.RecoverRequest(dry_run=dry_run), timeout=300)

    def render(r: Any) -> None:
        ctx.console.print(_actions_table(r.actions))
        for error in r.errors:
            ctx.console.print(f"[red]error[/]: {error}")

    ctx.emit(reply, render)
    if reply.errors:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("gtrid")
@click.option("--commit", "outcome", flag_value="commit", help="Force COMMIT.")
@click.option("--abort", "outcome", flag_value="abort", help="Force ABORT.")
@click.option("--reason", required=True, help="Why; kept in the audit record.")
@click.option("--force", is_flag=True, help="Contradict a logged decision (heuristic).")
@click.pass_obj
def resolve(ctx: _Context, gtrid: str, outcome: str | None, reason: str, force: bool) -> None:
    """Force COMMIT or ABORT of an in-doubt transaction (audited)."""
    _check(parse_gtrid, gtrid, "GTRID")
    if outcome is None:
        raise click.UsageError("say --commit or --abort")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    request = _admin.ResolveRequest(
        gtrid=gtrid, commit=outcome == "commit", reason=reason, force=force
    )
    reply = ctx.admin_call("Resolve", request, timeout=300)

    def render(r: Any) -> None:
        ctx.console.print(f"{r.decision.gtrid}: {_STATE_NAMES.get(r.decision.state, '?')}")
        ctx.console.print(_actions_table(r.actions))

    ctx.emit(reply, render)


def _check(validate: Callable[[str], Any], value: str, hint: str) -> None:
    try:
        validate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def main() -> None:
    cli(prog_name="twostep")
