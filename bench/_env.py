"""What every mode needs around its measurement: private servers, a coordinator, counters.

- `private_servers()`: a throwaway PostgreSQL and MariaDB (`twostep.testing`) in a temporary
  directory, with the settings a mode needs (connection limits, `max_prepared_transactions`),
  and a database `bench` on each; stopped and removed afterwards.
- `coordinator_counters(proc)`: what the coordinator's last "coordinator stopped" line counted
  (the decision log's writes and fsyncs since its start).
- `rpcs_to(address)`: how many RPCs this process has started to `address`, from gRPC's own
  channel counters (channelz), so no client code needs to count them.
- `resident_mb(pid)`: a process's resident memory now and at its peak; `cpu_s(pid)`: the CPU
  time it has used; `server_cpu_s(pid)`: with its child processes (PostgreSQL's backends).
- `machine()`: one line naming the date, the CPU and the core count, for a table's caption.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc_channelz.v1 import channelz, channelz_pb2

from twostep.testing import CoordinatorProcess, MariaDBServer, PostgresServer

__all__ = [
    "DATABASE",
    "MY_NAME",
    "PG_NAME",
    "Servers",
    "coordinator_counters",
    "cpu_s",
    "machine",
    "private_servers",
    "resident_mb",
    "rpcs_to",
    "server_cpu_s",
]

DATABASE = "bench"
#: The connections' names, which are also the coordinator's resource names.
PG_NAME = "bench_pg"
MY_NAME = "bench_my"

_STOPPED = re.compile(r'msg="coordinator stopped"(?P<pairs>.*)$', re.MULTILINE)


@dataclass
class Servers:
    pg: PostgresServer
    maria: MariaDBServer
    base_dir: Path

    @property
    def pg_config(self) -> dict[str, Any]:
        return self.pg.config(DATABASE)

    @property
    def maria_config(self) -> dict[str, Any]:
        return self.maria.config(DATABASE)

    def resources(self) -> dict[str, dict[str, Any]]:
        """The coordinator's resources, under the names the connections use."""
        return {PG_NAME: self.pg_config, MY_NAME: self.maria_config}

    def coordinator(self, name: str = "coordinator", **kwargs: Any) -> CoordinatorProcess:
        """A coordinator process (not started) on a fresh data dir beside the servers'."""
        return CoordinatorProcess(self.base_dir / name, **kwargs)


@contextlib.contextmanager
def private_servers(
    pg_settings: Mapping[str, str | int], maria_settings: Mapping[str, str | int]
) -> Iterator[Servers]:
    """A throwaway PostgreSQL and MariaDB with a database `bench` each; `ServerError` when
    they cannot start (binaries missing: `apt-get install postgresql-15 mariadb-server`)."""
    with tempfile.TemporaryDirectory(prefix="twostep-bench-") as tmp:
        base = Path(tmp)
        pg = PostgresServer(base / "pg", settings=pg_settings)
        maria = MariaDBServer(base / "maria", settings=maria_settings)
        try:
            pg.start()
            maria.start()
            pg.create_database(DATABASE)
            maria.create_database(DATABASE)
            yield Servers(pg, maria, base)
        finally:
            maria.stop()
            pg.stop()


def coordinator_counters(proc: CoordinatorProcess) -> dict[str, int]:
    """The `log_*` counters of the last "coordinator stopped" line (empty if none yet)."""
    found = list(_STOPPED.finditer(proc.output))
    if not found:
        return {}
    counters = {}
    for pair in found[-1]["pairs"].split():
        key, _, value = pair.partition("=")
        if key.startswith("log_") and value.isdigit():
            counters[key] = int(value)
    return counters


def rpcs_to(address: str) -> int:
    """RPCs this process has started on its channels to `address` (gRPC channelz counters;
    a channel made by `grpc.insecure_channel(address)` has the target `dns:///address`)."""
    total = 0
    start = 0
    while True:
        request = channelz_pb2.GetTopChannelsRequest(start_channel_id=start)
        reply = channelz.ChannelzServicer.GetTopChannels(request, None)
        for channel in reply.channel:
            if channel.data.target.removeprefix("dns:///") == address:
                total += channel.data.calls_started
            start = max(start, channel.ref.channel_id + 1)
        if reply.end or not reply.channel:
            return total


def resident_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of process `pid` in MB (VmRSS, VmHWM of /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used, all its threads (/proc stat)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def server_cpu_s(pid: int) -> float:
    """CPU seconds used by a server process `pid` and its child processes (PostgreSQL's
    backends): the live children's own, and the exited ones' that it has reaped (cutime,
    cstime), so that a backend ending between two readings is still counted."""
    fields = _stat_fields(pid)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            child = _stat_fields(int(entry))
            if int(child[1]) == pid:  # ppid
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """E.g. "2026-11-30, 2 cores (AMD EPYC 7B13), Linux 6.1, Python 3.11.2"."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    today = datetime.date.today().isoformat()
    kernel = platform.release().split("-")[0]
    return (
        f"{today}, {os.cpu_count()} cores ({model}), Linux {kernel}, "
        f"Python {platform.python_version()}"
    )
