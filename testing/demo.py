"""`twostep demo`: twostep at work, for a newcomer, on servers it starts and removes itself.

It starts a throwaway PostgreSQL and MariaDB (`PostgresServer`, `MariaDBServer`) and a
coordinator (`CoordinatorProcess`) with both registered, runs transfers from a PostgreSQL
account to a MariaDB account (the bank in `_demo_bank`) on a few threads with a progress bar,
SIGKILLs the coordinator halfway and restarts it on the same data directory and port, then
waits for recovery to settle and checks the end state: money conserved on both sides
together, every transfer on both databases or on neither, and nothing in doubt (the
coordinator's Admin.Status and a scan of both databases).

The admin CLI runs it as `twostep demo`: this package adds the command through the entry
point group `twostep.commands` (pyproject.toml), because the client may not import the
testing kit. `run()` is the same without click.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from twostep.client import ConnectionManager
from twostep.client.txn_states import IN_DOUBT, TxnState

from ._coordinator import CoordinatorProcess
from ._demo_bank import MARIA, PG, TIMEOUT_S, Bank, Outcome, Result, Tally
from ._mariadb import MariaDBServer
from ._postgres import PostgresServer
from ._processes import ServerError, sleep_until_signalled
from ._server import Server

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_SETUP_FAILED", "demo", "run"]

#: Money not conserved, a transfer on one side only, still in doubt; or the coordinator
#: exited by itself or did not come back after the kill.
EXIT_FAILED = 1
EXIT_SETUP_FAILED = 3  # server binaries missing, or a server or the coordinator did not start
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports SIGINT
DATABASE = "twostep_demo"
THREADS = 4  # transfers at once, so that the kill finds some of them in flight
OUTAGE_S = 2.0  # how long the coordinator stays down
#: Recovery every second, and taking over a decided transaction's phase 2 after a second:
#: the demo shows it finishing what the kill left, without the production defaults' waits.
COORDINATOR_SETTINGS = {"recovery_interval_s": 1, "recovery_grace_s": 1}
#: How long to wait for recovery to settle: an orphan (prepared, no decision) is aborted once
#: past its deadline and seen by two scans.
SETTLE_TIMEOUT_S = TIMEOUT_S + 30
_INSTALL = "on Debian or Ubuntu: apt-get install postgresql-15 mariadb-server"
_EXIT_WAIT_S = 5.0  # for the exit code of a coordinator found not running


_EXIT_CODES = {
    0: "every check passed",
    EXIT_FAILED: "a check failed, or the coordinator exited by itself",
    2: "usage error",
    EXIT_SETUP_FAILED: "a server or the coordinator could not start",
    EXIT_INTERRUPTED: "interrupted (everything is stopped and removed all the same)",
}


class _Failed(Exception):
    """The demo cannot go on: the message says why, `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


@click.command(
    short_help="Try twostep: transfers on throwaway databases, a coordinator crash.",
    epilog="\b\nExit codes:\n" + "\n".join(f"  {c:<3}  {why}" for c, why in _EXIT_CODES.items()),
)
@click.option(
    "--transfers",
    type=click.IntRange(10, 100_000),
    default=300,
    show_default=True,
    metavar="N",
    help="How many transfers to run; the coordinator is killed after half of them.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="At the end, leave the servers and the coordinator running and print how to "
    "connect to them, until Ctrl-C.",
)
def demo(transfers: int, keep: bool) -> None:
    """Try twostep: transfers across a throwaway PostgreSQL and MariaDB, a coordinator crash.

    Starts private PostgreSQL 15 and MariaDB 10.11 servers and a coordinator on free
    127.0.0.1 ports, runs N transfers (a PostgreSQL debit and a MariaDB credit in one global
    transaction each), SIGKILLs the coordinator halfway and restarts it, waits for its
    recovery, then prints the balances and whether anything is still in doubt. Everything
    it starts is stopped, and its temporary directory removed, at the end, on failure and
    on Ctrl-C.
    """
    with _sigterm_as_interrupt():
        code = run(transfers, keep=keep)
    sys.exit(code)


def run(transfers: int, *, keep: bool = False, console: Console | None = None) -> int:
    """The demo with `transfers` transfers (at least 10); its exit code (`EXIT_*`, 0 when
    every check passed). Prints to `console` (stdout by default). `keep`: after the report,
    wait for Ctrl-C with everything running. Cleans up whatever happens."""
    console = console or Console()
    cleanup = contextlib.ExitStack()
    cleanup.enter_context(_client_warnings_on(console))
    try:
        return _run(cleanup, console, transfers, keep)
    except _Failed as exc:
        what = "could not start" if exc.code == EXIT_SETUP_FAILED else "failed"
        console.print(f"[red]twostep demo {what}[/]: {escape(str(exc))}", soft_wrap=True)
        return exc.code
    except KeyboardInterrupt:
        console.print("interrupted: stopping everything and removing its files")
        return EXIT_INTERRUPTED
    finally:
        with _uninterruptible():  # a second Ctrl-C must not leave a server running
            cleanup.close()


def _run(cleanup: contextlib.ExitStack, console: Console, transfers: int, keep: bool) -> int:
    base = Path(tempfile.mkdtemp(prefix="twostep-demo-"))
    cleanup.callback(shutil.rmtree, base, ignore_errors=True)
    console.print(f"everything is in {base} (removed at the end)", soft_wrap=True)
    servers = _servers(base)
    for server in servers:
        cleanup.callback(_stop, server)
    # Both at once (each takes seconds). Interrupted, the cleanup waits for the starts to end
    # before it stops the servers: a server launched after its stop would be left running.
    starting = cleanup.enter_context(ThreadPoolExecutor(len(servers)))
    for server, started in zip(servers, starting.map(_start, servers), strict=True):
        if started is not None:
            raise _Failed(started, EXIT_SETUP_FAILED)
        console.print(f"{server.name} on {server.host}:{server.port}")
    pg, maria = servers
    coordinator = CoordinatorProcess(
        base / "coordinator",
        resources={PG: pg.config(DATABASE), MARIA: maria.config(DATABASE)},
        settings=COORDINATOR_SETTINGS,
    )
    cleanup.callback(coordinator.close)
    _start_coordinator(coordinator.start, EXIT_SETUP_FAILED)
    console.print(
        f"coordinator on {coordinator.address}, cluster {coordinator.cluster_id}, "
        f"with both databases registered as resources {PG!r} and {MARIA!r}",
        soft_wrap=True,
    )
    cleanup.callback(ConnectionManager.close_all)
    bank = Bank(pg.config(DATABASE), maria.config(DATABASE), coordinator.address)
    bank.create_schema()

    stop = threading.Event()
    cleanup.callback(stop.set)  # the workers take no new transfer once the demo ends
    tally = _transfers(bank, coordinator, transfers, stop, console)
    console.print("waiting for the coordinator's recovery to settle ...")
    in_doubt, prepared = _settle(coordinator)
    problems = _report(console, bank, tally, in_doubt, prepared)
    code = EXIT_FAILED if problems else 0
    if keep:
        _wait_with_everything_running(console, base, pg, maria, coordinator)
    return code


def _servers(base: Path) -> list[Server]:
    """Both servers, not started; `_Failed` naming every missing binary and the
    packages that have them."""
    servers: list[Server] = []
    missing = []
    for kind, directory in ((PostgresServer, "postgres"), (MariaDBServer, "mariadb")):
        try:
            servers.append(kind(base / directory))
        except ServerError as exc:
            missing.append(str(exc))
    if missing:
        raise _Failed(
            "it runs its own PostgreSQL 15 and MariaDB 10.11 servers, from the machine's "
            f"server binaries: {'; '.join(missing)} ({_INSTALL})",
            EXIT_SETUP_FAILED,
        )
    return servers


def _start(server: Server) -> str | None:
    """Start `server` and create the demo's database; None, or why it failed."""
    try:
        server.start()
        server.create_database(DATABASE)
    except ServerError as exc:
        return str(exc)
    return None


def _transfers(
    bank: Bank, coordinator: CoordinatorProcess, count: int, stop: threading.Event, console: Console
) -> Tally:
    """Run `count` transfers on `THREADS` threads with a progress bar; SIGKILL the
    coordinator once half are done and restart it `OUTAGE_S` later."""
    numbers = iter(range(count))
    numbers_lock = threading.Lock()
    done: queue.Queue[Result | BaseException] = queue.Queue()

    def work() -> None:
        try:
            while not stop.is_set():
                with numbers_lock:
                    number = next(numbers, None)
                if number is None:
                    return
                transfer_id = f"t{number:05d}"
                done.put(bank.transfer(transfer_id, random.Random(transfer_id)))
        except BaseException as exc:  # a bug, not a transfer's outcome: the demo must stop
            done.put(exc)

    workers = [threading.Thread(target=work, name=f"demo-{n}", daemon=True) for n in range(THREADS)]
    tally = Tally()
    killed_at: float | None = None
    restarted = False
    columns = (
        TextColumn("transfers"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
    )
    console.print(
        f"running {count} transfers on {THREADS} threads; the coordinator is killed halfway"
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=count)
        for worker in workers:
            worker.start()
        while len(tally.results) < count:
            with contextlib.suppress(queue.Empty):
                item = done.get(timeout=0.1)
                if isinstance(item, BaseException):
                    raise item
                tally.results.append(item)
                progress.update(task, advance=1, description=_summary(tally))
            if (killed_at is None or restarted) and not coordinator.is_running():
                if coordinator.wait_exit(_EXIT_WAIT_S) == 0:
                    # It stops cleanly only when asked to: a Ctrl-C reaches the terminal's
                    # whole process group, and the coordinator may act on it before we do.
                    raise KeyboardInterrupt
                raise _Failed(f"the coordinator exited by itself; its log:\n{_tail(coordinator)}")
            if killed_at is None and len(tally.results) >= count // 2:
                progress.console.print(
                    f"after {len(tally.results)} transfers: killing the coordinator (SIGKILL); "
                    "transfers that need it now wait for it, or fail",
                    soft_wrap=True,
                )
                coordinator.kill()
                killed_at = time.monotonic()
            elif (
                killed_at is not None and not restarted and time.monotonic() > killed_at + OUTAGE_S
            ):
                _start_coordinator(coordinator.restart)
                restarted = True
                progress.console.print(
                    f"coordinator restarted after {time.monotonic() - killed_at:.1f} s, on the "
                    "same data directory and port: its recovery finishes what the kill left",
                    soft_wrap=True,
                )
    for worker in workers:
        worker.join()
    if not restarted:  # the last transfers finished within the outage
        _start_coordinator(coordinator.restart)
    return tally


def _start_coordinator(start: Callable[[], object], code: int = EXIT_FAILED) -> None:
    """`start` (the coordinator's start or restart), or `_Failed` with `code` and its log."""
    try:
        start()
    except RuntimeError as exc:  # its message ends with the coordinator's log
        raise _Failed(str(exc), code) from None


def _tail(coordinator: CoordinatorProcess, lines: int = 20) -> str:
    return "\n".join(coordinator.output.splitlines()[-lines:])


def _summary(tally: Tally) -> str:
    words = [f"{len(tally.ids(outcome))} {outcome.value}" for outcome in Outcome]
    return ", ".join(w for w in words if not w.startswith("0 "))


def _settle(coordinator: CoordinatorProcess) -> tuple[int, list[str]]:
    """Run recovery passes until the coordinator counts nothing in doubt and no branch of
    its cluster is prepared on either database, or `SETTLE_TIMEOUT_S` passed; what is left
    (the in-doubt count of Admin.Status, the prepared branches)."""
    give_up = time.monotonic() + SETTLE_TIMEOUT_S
    with coordinator.admin() as admin:
        while True:
            admin.recover()
            in_doubt, prepared = admin.status().in_doubt, admin.prepared_here()
            if (in_doubt == 0 and not prepared) or time.monotonic() > give_up:
                return in_doubt, prepared
            time.sleep(0.5)


def _report(
    console: Console, bank: Bank, tally: Tally, in_doubt: int, prepared: list[str]
) -> list[str]:
    """Print the outcomes, the balances and the checks; the checks that failed."""
    balances = bank.balances()
    both = set(balances.pg_transfers) & set(balances.maria_transfers)
    console.print(f"{len(tally.results)} transfers: {_summary(tally)}", soft_wrap=True)
    for outcome in (Outcome.ROLLED_BACK, Outcome.UNKNOWN):
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(tally.reasons(outcome).items()))
        if reasons:
            console.print(f"  {outcome.value}: {reasons}", soft_wrap=True)
    unknown = tally.ids(Outcome.UNKNOWN)
    if unknown:
        console.print(
            f"  of the {len(unknown)} with an outcome unknown to the client, recovery "
            f"committed {len(unknown & both)} and rolled back {len(unknown - both)}",
            soft_wrap=True,
        )
    half = bank.initial_total // 2
    table = Table("balances", "at the start", "now", box=box.SIMPLE_HEAD)
    table.add_row("PostgreSQL", str(half), str(balances.pg))
    table.add_row("MariaDB", str(half), str(balances.maria))
    table.add_row("together", str(bank.initial_total), str(balances.total))
    console.print(table)

    problems = bank.check(balances, tally)
    if balances.total == bank.initial_total:
        console.print(
            f"money conserved: {balances.pg} + {balances.maria} = {balances.total}", soft_wrap=True
        )
    if set(balances.pg_transfers) == set(balances.maria_transfers):
        console.print(f"every transfer is on both databases or on neither ({len(both)} on both)")
    *others, last = [s.value for s in TxnState if s in IN_DOUBT]
    words = f"{', '.join(others)} or {last}"
    if in_doubt or prepared:
        problems.append(
            f"still in doubt after {SETTLE_TIMEOUT_S} s: {in_doubt} transactions {words}; "
            f"prepared branches: {prepared or 'none'}"
        )
    else:
        console.print(
            f"nothing in doubt: the coordinator counts 0 transactions {words}, and no branch "
            "is left prepared on either database",
            soft_wrap=True,
        )
    for problem in problems:
        console.print(f"[red]FAILED[/]: {escape(problem)}", soft_wrap=True)
    if problems:
        console.print("run again with --keep to look at the databases and the coordinator")
    return problems


def _wait_with_everything_running(
    console: Console,
    base: Path,
    pg: Server,
    maria: Server,
    coordinator: CoordinatorProcess,
) -> None:
    """Print how to reach the servers and the coordinator; return at Ctrl-C or SIGTERM."""
    lines = [
        "still running (--keep):",
        f"  psql -h {pg.host} -p {pg.port} -U postgres {DATABASE}",
        f"  mariadb -h {maria.host} -P {maria.port} -u {MariaDBServer.user} "
        f"-p{MariaDBServer.password} {DATABASE}",
        f"  {_cli_path()} --coordinator {coordinator.address} --data-dir {coordinator.data_dir}"
        " status",
        f"  client configs: {PG} = {json.dumps(pg.config(DATABASE))}",
        f"                  {MARIA} = {json.dumps(maria.config(DATABASE))}",
        f"Ctrl-C stops them and removes {base}.",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
    with contextlib.suppress(KeyboardInterrupt):
        sleep_until_signalled()


@contextlib.contextmanager
def _client_warnings_on(console: Console) -> Iterator[None]:
    """twostep's warnings (e.g. "Commit unanswered, asking again" during the outage) printed
    on `console`, above the progress bar: what went wrong is shown, not hidden."""
    handler = RichHandler(console=console, show_time=False, show_path=False)
    logger = logging.getLogger("twostep")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _stop(server: Server) -> None:
    with contextlib.suppress(ServerError):  # it did not shut down in time: stop() killed it
        server.stop()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: cleaned up, not killed half-way. Ctrl-C itself is
    set too: started with SIGINT ignored (a non-interactive shell's background job is), Python
    would not turn it into KeyboardInterrupt, and "Ctrl-C stops them" would not hold."""
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM meanwhile (only the main thread may; elsewhere, nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _ENDING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


_ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _cli_path() -> str:
    """The `twostep` command beside this Python (a clone's `.venv/bin/twostep` is on no PATH),
    else the bare name."""
    beside = Path(sys.executable).with_name("twostep")
    return str(beside) if beside.exists() else "twostep"
