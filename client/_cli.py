"""`twostep`: the admin CLI. See and resolve in-doubt transactions through the coordinator.

Tables for people, `--json` for scripts. Every command of its own is an Admin call and needs the
admin token (`_find_token`); installed packages may add commands (`ADDED_COMMANDS`: `demo`).
The exit codes are `ExitCode`, listed by `--help` and the README.

Text from the coordinator (reasons, notes, database errors: what anyone who can reach it may
have written) is printed through `_shown`: its control characters escaped, never read as rich
markup. JSON escapes them by itself.
"""

from __future__ import annotations

import enum
import importlib.metadata
import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from google.protobuf import json_format
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from twostep.v1 import admin_pb2 as _admin
from twostep.v1 import admin_pb2_grpc as _admin_grpc
from twostep.v1 import coordinator_pb2 as _pb

from ._channel import ChannelConfig
from ._coordinator_client import MAX_REASON_CHARS, bounded_reason
from .tpc.xid import parse_gtrid, validate_resource_name
from .txn_states import GROUPS, TxnState

__all__ = ["ExitCode", "main"]


class ExitCode(enum.IntEnum):
    """The CLI's exit codes; `description` is what `--help` and the README say of each."""

    description: str

    def __new__(cls, code: int, description: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.description = description
        return member

    OK = 0, "done"
    FAILED = 1, "refused or failed (e.g. resolve contradicting a decision without --force)"
    USAGE = 2, "usage error: a bad or conflicting option or argument; nothing was sent"
    UNREACHABLE = (
        3,
        "coordinator unreachable (not listening, no answer in time, or the TLS handshake failed)",
    )
    NOT_FOUND = 4, "no such transaction or resource"
    TOKEN = 5, "admin token missing (none found) or refused by the coordinator"
    DATABASE = 6, "a database could not be reached by the coordinator (scan)"


#: Trailing metadata of an UNAVAILABLE answer from the coordinator itself: it was reached, a
#: database it needed was not (the value names the resource; admin.proto, ScanResource).
UNREACHABLE_RESOURCE_KEY = "twostep-unreachable-resource"
_PROBE_TIMEOUT_S = 1.0  # a TCP connect to tell "not listening" from "handshake failed"
_EXIT_BY_STATUS = {
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNREACHABLE,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
}
#: The log's decision, in the words of `TxnState` (scan, resolve).
_DECISIONS = {
    _pb.TRANSACTION_STATE_COMMITTED: "committed",
    _pb.TRANSACTION_STATE_ABORTED: "aborted",
}
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RPC_TIMEOUT = 30.0


class _Option(click.Option):
    """An option that may name options it cannot be given with (`excludes`: their flags)."""

    def __init__(self, *args: Any, excludes: tuple[str, ...] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.excludes = excludes


class _StrictCommand(click.Command):
    """Conflicting options are a usage error, never "the last one wins": an option given
    twice, two options that set the same value (`--commit --abort`), or options that exclude
    each other (`_Option.excludes`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_conflicts(self, ctx, args)
        return super().parse_args(ctx, args)


def _refuse_conflicts(command: click.Command, ctx: click.Context, args: list[str]) -> None:
    """`click.UsageError` if `args` give `command` an option twice or conflicting options."""
    _, _, order = command.make_parser(ctx).parse_args(args=list(args))
    given = [p for p in order if isinstance(p, click.Option) and p.expose_value and not p.multiple]
    for i, param in enumerate(given):
        for other in given[:i]:
            if other is param:
                raise click.UsageError(f"{_flag(param)} is given twice", ctx)
            if other.name == param.name or _excludes(other, param) or _excludes(param, other):
                raise click.UsageError(
                    f"{_flag(other)} and {_flag(param)} cannot be used together", ctx
                )


def _excludes(option: click.Option, other: click.Option) -> bool:
    return bool(set(getattr(option, "excludes", ())) & set(other.opts))


def _flag(option: click.Option) -> str:
    return max(option.opts, key=len)


class _StrictGroup(_StrictCommand, click.Group):
    """Also runs the commands other installed packages add (`_added_commands`), under the
    same parse rules."""

    command_class = _StrictCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_added_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        added = _added_commands().get(cmd_name)
        return added.load() if command is None and added is not None else command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not isinstance(command, _StrictCommand):
            _refuse_conflicts(command, click.Context(command, info_name=name, parent=ctx), rest)
        return name, command, rest


#: Entry points of this group name commands that other packages add to `twostep`: the
#: client may not import them (twostep.testing adds `demo`; see [tool.importlinter]).
ADDED_COMMANDS = "twostep.commands"


def _added_commands() -> dict[str, importlib.metadata.EntryPoint]:
    return {e.name: e for e in importlib.metadata.entry_points(group=ADDED_COMMANDS)}


def _duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number with s, m, h or d, e.g. 90s or 5m")
    return int(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True)
class _Token:
    """The admin token, and where it came from (for the messages); `value` None: not found."""

    value: str | None
    source: str


class _Context:
    def __init__(
        self, address: str, token: _Token, as_json: bool, tls: ChannelConfig | None = None
    ):
        self.address = address
        self.token = token
        self.as_json = as_json
        self.tls = tls or ChannelConfig()
        self.channel = self.tls.open(address)
        self.admin = _admin_grpc.AdminStub(self.channel)
        self.console = Console()

    def admin_call(self, method: str, request: Any, timeout: float = _RPC_TIMEOUT) -> Any:
        """One Admin RPC with the token; grpc errors become exit codes (see `_rpc`).

        Without a token the call goes out all the same: an unreachable coordinator must say
        so (exit 3), and only a coordinator that answers can say a token is needed.
        """
        metadata = [("authorization", f"Bearer {self.token.value}")] if self.token.value else []
        with _rpc(self):
            return getattr(self.admin, method)(request, metadata=metadata, timeout=timeout)

    def emit(
        self,
        message: Any,
        render: Callable[[Any], None],
        extra: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> None:
        """Print `message` with `render`, or as JSON (`drop` fields left out, `extra` added)."""
        if not self.as_json:
            render(message)
            return
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
        data = {k: v for k, v in data.items() if k not in drop} | (extra or {})
        click.echo(json.dumps(data, indent=2, sort_keys=True))


def _fail(code: ExitCode, message: str) -> NoReturn:
    click.echo(f"twostep: {_printable(message)}", err=True)
    sys.exit(code)


def _printable(text: str) -> str:
    """`text` with every character that is not printable (a CR that rewrites the line, an
    ESC that starts a terminal command, a BEL, a newline that fakes a line) as its Python
    escape, e.g. `\\x1b`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _shown(text: str) -> Text:
    """Coordinator text to print with rich: printable (`_printable`), and never markup."""
    return Text(_printable(text))


@contextmanager
def _rpc(ctx: _Context) -> Iterator[None]:
    """The one place where grpc errors become exit codes and messages."""
    try:
        yield
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if ctx.token.value is None:
                _fail(ExitCode.TOKEN, f"{ctx.address} needs the admin token; {ctx.token.source}")
            _fail(
                ExitCode.TOKEN,
                f"{ctx.address} refused the admin token from {ctx.token.source}: it is not "
                "this coordinator's token (the coordinator's is its admin_token setting, or "
                "the admin-token file in its data directory)",
            )
        trailers = dict(exc.trailing_metadata() or ())
        if code == grpc.StatusCode.UNAVAILABLE and UNREACHABLE_RESOURCE_KEY in trailers:
            _fail(ExitCode.DATABASE, details)
        if code == grpc.StatusCode.UNAVAILABLE and _accepts_connections(ctx.address):
            _fail(
                ExitCode.UNREACHABLE,
                f"coordinator at {ctx.address} accepts connections but no call got through "
                f"({details}): {_handshake_hint(ctx.tls)}",
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            _fail(ExitCode.UNREACHABLE, f"coordinator unreachable at {ctx.address}: {details}")
        _fail(_EXIT_BY_STATUS.get(code, ExitCode.FAILED), f"{code.name}: {details}")


def _accepts_connections(address: str) -> bool:
    """Whether something accepts a TCP connection at `address` (HOST:PORT) within
    `_PROBE_TIMEOUT_S`: then an UNAVAILABLE call failed in the handshake (TLS on one side
    only, a certificate not trusted or not sent), not for want of a listener."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), _PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _handshake_hint(tls: ChannelConfig) -> str:
    if not tls.tls:
        return (
            "if it speaks TLS, pass --tls-ca (its CA certificate), and --tls-cert/--tls-key "
            "if it asks for a client certificate"
        )
    return (
        "check that --tls-ca is the CA of its certificate and that the certificate names this "
        "host, whether it asks for a client certificate (--tls-cert/--tls-key, from the CA "
        "it trusts), and that it speaks TLS at all (a plain-text coordinator takes no --tls-*)"
    )


_TOKEN_OPTIONS = ("token", "token_file", "data_dir")  # the first one given is used


def _find_token(ctx: click.Context) -> _Token:
    """The admin token: from the first of --token, --token-file, --data-dir given on the
    command line, else set in the environment, else <./twostep-data>/admin-token."""
    sources = sorted(
        _TOKEN_OPTIONS,
        key=lambda name: (
            ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE,
            ctx.params[name] is None,
        ),
    )
    name = sources[0]
    value = ctx.params[name]
    source = ctx.get_parameter_source(name)
    where = "--" + name.replace("_", "-")
    if source is click.core.ParameterSource.ENVIRONMENT:
        where = "$" + _ENVVARS[name]
    if name == "token":
        return _Token(value, where)
    path = Path(value) if name == "token_file" else Path(value) / ADMIN_TOKEN_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if name == "token_file":
            raise click.BadParameter(f"{path}: no such file", param_hint=where) from None
        return _Token(None, f"no {path.resolve()} ({_HOW_TO_GIVE_A_TOKEN})")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise click.BadParameter(f"cannot read {path}: {why}", param_hint=where) from None
    if not text:
        raise click.BadParameter(f"{path} is empty", param_hint=where)
    return _Token(text, f"{path.resolve()} ({where})")


ADMIN_TOKEN_FILE = "admin-token"  # the file the coordinator writes into its data directory
_ENVVARS = {
    "token": "TWOSTEP_ADMIN_TOKEN",
    "token_file": "TWOSTEP_ADMIN_TOKEN_FILE",
    "data_dir": "TWOSTEP_DATA_DIR",
}
_HOW_TO_GIVE_A_TOKEN = (
    "give --token, --token-file or --data-dir, or set $TWOSTEP_ADMIN_TOKEN, "
    "$TWOSTEP_ADMIN_TOKEN_FILE or $TWOSTEP_DATA_DIR"
)


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ms / 1000))


def _table(width: int, columns: list[tuple[str, int]], rows: list[list[str]]) -> Table:
    """A table whose first column (an id) is never cut, so that it can be copied: it gets
    its whole width; the other columns follow, in order, only while their `min_width` still
    fits in `width` (the rest are dropped), and they wrap."""
    rows = [[_printable(cell) for cell in row] for row in rows]
    id_width = max([len(columns[0][0]), *(len(r[0]) for r in rows)])
    used, kept = id_width, 1
    for _, min_width in columns[1:]:
        if used + _PADDING + min_width > width:
            break
        used += _PADDING + min_width
        kept += 1
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column(columns[0][0], no_wrap=True, min_width=id_width)
    for header, min_width in columns[1:kept]:
        table.add_column(header, min_width=min_width, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row[:kept]))
    return table


_PADDING = 3  # between two columns of a `_table`: a space, the rule under the header, a space


def _transactions_table(width: int, listed: Any) -> Table:
    """`listed`: ListedTransaction or TransactionDetail messages (a transaction, its state
    word, why it is blocked)."""
    columns = [
        ("gtrid", 0),
        ("state", 10),
        ("branches", 10),
        ("blocked", 16),
        ("begun", 10),
        ("deadline", 10),
        ("reason", 12),
    ]
    rows = [
        [
            t.transaction.gtrid,
            t.state,
            ", ".join(b.resource for b in t.transaction.branches) or "-",
            t.blocked or "-",
            _when(t.transaction.begun_unix_ms),
            _when(t.transaction.deadline_unix_ms),
            t.transaction.reason or "-",
        ]
        for t in listed
    ]
    return _table(width, columns, rows)


def _states_help() -> str:
    lines = [f"{s.value}: {s.description}." for s in TxnState]
    lines += [f"{name}: {description}." for name, (description, _) in GROUPS.items()]
    return "Only transactions in this state. " + " ".join(lines)


_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def _address(text: str) -> str:
    match = _ADDRESS.fullmatch(text.strip())
    if not match or not 0 < int(match[2]) < 65536:
        raise click.BadParameter(
            f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051"
        )
    return text.strip()


def _exit_codes() -> str:
    lines = "\n".join(f"  {c.value}  {c.description}" for c in ExitCode)
    return f"\b\nExit codes:\n{lines}"


@click.group(
    cls=_StrictGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_exit_codes(),
)
@click.option(
    "--coordinator",
    envvar="TWOSTEP_COORDINATOR",
    default="127.0.0.1:50051",
    show_default=True,
    type=_address,
    metavar="HOST:PORT",
    help="Address of the coordinator. Env: TWOSTEP_COORDINATOR.",
)
@click.option(
    "--token",
    envvar=_ENVVARS["token"],
    cls=_Option,
    excludes=("--token-file", "--data-dir"),
    help=f"The admin token. Env: {_ENVVARS['token']}.",
)
@click.option(
    "--token-file",
    envvar=_ENVVARS["token_file"],
    cls=_Option,
    excludes=("--data-dir",),
    type=click.Path(dir_okay=False),
    help=f"A file holding the admin token. Env: {_ENVVARS['token_file']}.",
)
@click.option(
    "--data-dir",
    envvar=_ENVVARS["data_dir"],
    default="twostep-data",
    show_default=True,
    type=click.Path(file_okay=False),
    help=f"The coordinator's data directory: the token is its {ADMIN_TOKEN_FILE} file. "
    f"Env: {_ENVVARS['data_dir']}.",
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
    as_json: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    **_token_options: str | None,
) -> None:
    """See and end in-doubt twostep transactions, through the coordinator's Admin service.

    Every command but `demo` needs the admin token: the first of --token, --token-file,
    --data-dir given, else the first of their environment variables set, else
    ./twostep-data/admin-token; or, under mutual TLS, an admin's client certificate
    (--tls-cert, --tls-key).
    """
    try:
        tls = ChannelConfig(*(Path(p) if p else None for p in (tls_ca, tls_cert, tls_key)))
    except ValueError as exc:
        raise click.UsageError(f"--tls-cert / --tls-key: {exc}") from None
    ctx.obj = _Context(coordinator, _find_token(ctx), as_json, tls)


@cli.command()
@click.pass_obj
def status(ctx: _Context) -> None:
    """Counts by state, in-doubt transactions, resources, the last recovery pass."""
    reply = ctx.admin_call("Status", _admin.StatusRequest())
    counts = {
        TxnState.ACTIVE: reply.active,
        TxnState.ORPHANED: reply.orphaned,
        TxnState.COMMITTING: reply.committed_incomplete,
        TxnState.ABORTING: reply.aborted_incomplete,
        "in-doubt": reply.in_doubt,
        "blocked": reply.blocked,
    }

    def render(r: Any) -> None:
        words = ", ".join(f"{n} {word}" for word, n in counts.items())
        ctx.console.print(
            Text.assemble("cluster ", (_printable(r.cluster_id), "bold"), f": {words}"),
            soft_wrap=True,
        )
        if r.blocked:
            ctx.console.print("why: twostep list --state blocked; twostep show GTRID")
        columns = [("resource", 0), ("reachable", 9), ("prepared", 8), ("error", 16)]
        columns += [("dialect", 10), ("target", 16)]
        rows = [
            [
                res.name,
                "yes" if res.reachable else "NO",
                str(res.prepared),
                res.error or "-",
                res.dialect,
                res.target,
            ]
            for res in r.resources
        ]
        ctx.console.print(_table(ctx.console.width, columns, rows))
        last = r.last_recovery
        if last.started_unix_ms:
            ctx.console.print(
                f"last recovery pass {_when(last.started_unix_ms)}: "
                f"{len(last.actions)} actions, {len(last.errors)} errors"
            )

    # The counts by the words of `list --state`, not the wire's field names.
    ctx.emit(reply, render, {"counts": counts}, drop=_COUNT_FIELDS)


_COUNT_FIELDS = ("active", "orphaned", "committed_incomplete", "aborted_incomplete")
_COUNT_FIELDS += ("in_doubt", "blocked")


@cli.command("list")
@click.option(
    "--state",
    type=click.Choice([*(s.value for s in TxnState), *GROUPS]),
    help=_states_help(),
)
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
    """Transactions the coordinator knows, oldest first, with their state; also orphans
    (branches prepared with no decision) that the log has no row of."""
    request = _admin.AdminListRequest(state=state or "", older_than_s=older_than or 0, limit=limit)
    reply = ctx.admin_call("ListTransactions", request)
    ctx.emit(
        reply, lambda r: ctx.console.print(_transactions_table(ctx.console.width, r.transactions))
    )


@cli.command()
@click.argument("gtrid")
@click.pass_obj
def show(ctx: _Context, gtrid: str) -> None:
    """One transaction: its state, deadline, and each branch's state on its database."""
    _check(parse_gtrid, gtrid, "GTRID")
    reply = ctx.admin_call("ShowTransaction", _admin.ShowTransactionRequest(gtrid=gtrid))

    def render(r: Any) -> None:
        width = ctx.console.width
        ctx.console.print(_transactions_table(width, [r]))
        columns = [("resource", 0), ("on its database", 20), ("dialect", 10), ("session", 8)]
        rows = [
            [b.branch.resource, b.on_database, b.branch.dialect, str(b.branch.session_id or "-")]
            for b in r.branches
        ]
        ctx.console.print(_table(width, columns, rows))
        for note in r.notes:
            ctx.console.print(_shown(f"note: {note}"))

    ctx.emit(reply, render)


@cli.command()
@click.argument("resource")
@click.pass_obj
def scan(ctx: _Context, resource: str) -> None:
    """Prepared xids on one database, each beside what the log says of it."""
    _check(validate_resource_name, resource, "RESOURCE")
    reply = ctx.admin_call("ScanResource", _admin.ScanResourceRequest(resource=resource))

    def render(r: Any) -> None:
        columns = [("gtrid", 0), ("owner", 8), ("decision", 9), ("deadline", 10), ("xid", 20)]
        rows = [
            [
                x.gtrid or "-",
                x.owner,
                _DECISIONS.get(x.logged_state, "none") if x.owner == "ours" else "-",
                _when(x.deadline_unix_ms),
                x.raw,
            ]
            for x in r.xids
        ]
        ctx.console.print(_table(ctx.console.width, columns, rows))

    ctx.emit(reply, render)


def _actions_table(width: int, actions: Any) -> Table:
    columns = [("gtrid", 0), ("resource", 10), ("action", 8), ("result", 12)]
    rows = [[a.gtrid, a.resource, a.action, a.result] for a in actions]
    return _table(width, columns, rows)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only say what a pass would do.")
@click.pass_obj
def recover(ctx: _Context, dry_run: bool) -> None:
    """Run one recovery pass now and report every action."""
    reply = ctx.admin_call("Recover", _admin.RecoverRequest(dry_run=dry_run), timeout=300)

    def render(r: Any) -> None:
        ctx.console.print(_actions_table(ctx.console.width, r.actions))
        for error in r.errors:
            ctx.console.print(Text.assemble(("error", "red"), ": ", _printable(error)))

    ctx.emit(reply, render)
    if reply.errors:
        sys.exit(ExitCode.FAILED)


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
    if len(reason) > MAX_REASON_CHARS or bounded_reason(reason) != reason:
        raise click.BadParameter(
            f"must be at most {MAX_REASON_CHARS} characters of valid UTF-8", param_hint="--reason"
        )
    request = _admin.ResolveRequest(
        gtrid=gtrid, commit=outcome == "commit", reason=reason, force=force
    )
    reply = ctx.admin_call("Resolve", request, timeout=300)

    def render(r: Any) -> None:
        ctx.console.print(_shown(f"{r.decision.gtrid}: {_DECISIONS[r.decision.state]}"))
        ctx.console.print(_actions_table(ctx.console.width, r.actions))

    ctx.emit(reply, render)


def _check(validate: Callable[[str], Any], value: str, hint: str) -> None:
    try:
        validate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def main() -> None:
    cli(prog_name="twostep")
