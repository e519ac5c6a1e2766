"""Process handling shared by the throwaway servers: free ports, /proc scans, kill trees.

Linux only: processes are found through /proc (a server's children, the processes working in
a data dir), which is what lets a crash (`kill_tree`) leave nothing of an instance behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A throwaway server could not be set up, started or stopped."""


def free_port() -> int:
    """A port that is free on 127.0.0.1 now (the caller retries if it is taken later).

    Chosen below the kernel's ephemeral range rather than with bind(0): restart() reuses the
    port, and while a killed server is down, an outgoing connection or another process's
    bind(0) could otherwise take it.
    """
    ephemeral_low = _ephemeral_port_low()
    for _ in range(100):
        port = random.randrange(max(1024, ephemeral_low - 20000), ephemeral_low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((HOST, port))
            return port
    with socket.socket() as sock:  # no luck below the range: let the kernel choose
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ephemeral_port_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[1])


def _all_pids() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _stat(other)
        if stat:
            children.setdefault(stat[1], []).append(other)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (which holds no resources any more)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def sleep_until_signalled() -> None:
    """Sleep until a signal's handler raises (KeyboardInterrupt for Ctrl-C or SIGTERM).

    Python runs a handler in the main thread, and only once that thread runs code; a signal
    the kernel gave another thread (threads reading a server's output, gRPC's) would not end
    one long sleep, so this wakes every 0.2 s to let it run."""
    while True:
        time.sleep(0.2)


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, e.g. a failpoint with the `stop` action)."""
    stat = _stat(pid)
    return stat is not None and stat[0] == "T"


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants; returns the pids signalled.

    The parent is frozen first so that it cannot fork new children while we collect them
    (a PostgreSQL postmaster would otherwise respawn workers).
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    pids = [*_descendants(pid), pid]
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return pids


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until none of `pids` is alive; `ServerError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise ServerError(f"processes still alive after SIGKILL: {pids}")
        time.sleep(0.01)


def names_dir(pid: int, directory: Path) -> bool:
    """Whether the command line of `pid` names `directory` (as an argument or `--x=DIR`)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    path = str(directory)
    args = raw.decode(errors="replace").split("\0")
    return any(arg == path or arg.endswith("=" + path) for arg in args)


def pids_with_cwd(directory: Path) -> list[int]:
    """Processes whose working directory is `directory`: both servers chdir to their data dir,
    so this finds every process of an instance, even orphans whose parent was killed."""
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):  # gone, or not ours to inspect
            if pid != os.getpid() and os.readlink(f"/proc/{pid}/cwd") == str(directory):
                found.append(pid)
    return found


def tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last `lines` lines written to `path` after byte `offset` (for error messages)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
