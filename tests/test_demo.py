"""`twostep demo`: the real command end to end (its own servers and coordinator, a coordinator
SIGKILLed halfway), its exit codes, and that Ctrl-C leaves nothing running or on disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from twostep.client._cli import cli
from twostep.testing import _mariadb, _postgres, demo

TWOSTEP = Path(sys.executable).with_name("twostep")  # the installed console script
BASE_DIR = re.compile(r"everything is in (\S+)")
MONEY = re.compile(r"money conserved: (\d+) \+ (\d+) = (\d+)")


def demo_env() -> dict[str, str]:
    """The test run's environment without TWOSTEP_* variables (no stray token or address)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}


def processes_using(directory: str) -> list[str]:
    """Processes that name `directory` (or a path in it) on their command line or work in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if directory in command or cwd.startswith(directory):
            found.append(f"{entry.name}: {command}")
    return found


def test_demo_survives_a_coordinator_kill_with_money_conserved_and_nothing_in_doubt():
    result = subprocess.run(
        [str(TWOSTEP), "demo", "--transfers", "60"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "killing the coordinator (SIGKILL)" in output
    assert "coordinator restarted" in output
    assert re.search(r"^60 transfers: \d+ committed", output, re.MULTILINE), output
    pg, maria, total = map(int, MONEY.search(output).groups())
    assert pg + maria == total == demo.Bank.initial_total
    assert pg < total // 2 < maria  # transfers moved money from PostgreSQL to MariaDB
    assert "every transfer is on both databases or on neither" in output
    assert "nothing in doubt: the coordinator counts 0 transactions" in output
    assert "FAILED" not in output
    base = BASE_DIR.search(output)[1]
    assert not Path(base).exists()
    assert processes_using(base) == []


@contextlib.contextmanager
def demo_until(
    line_start: str, *args: str, sigint_ignored: bool = False
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`twostep demo ARGS` running, with its output up to the line that starts with
    `line_start`. In its own process group, like a terminal's foreground job, so that a
    Ctrl-C (`os.killpg`) reaches the demo and the coordinator it started, as in a terminal.
    `sigint_ignored`: started with SIGINT ignored, as a non-interactive shell starts a
    background job (`cmd &`). Killed at the end if still running."""
    command = [str(TWOSTEP), "demo", *args]
    if sigint_ignored:
        command = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *command]
    proc = subprocess.Popen(
        command,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(line_start):
                break
        else:
            proc.wait()
            pytest.fail(f"exit {proc.returncode} before {line_start!r}:\n{''.join(lines)}")
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_midway_stops_every_process_and_removes_the_files():
    with demo_until("running 5000 transfers", "--transfers", "5000") as (proc, lines):
        base = BASE_DIR.search("".join(lines))[1]
        assert processes_using(base), "the servers and the coordinator should be running"
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode == demo.EXIT_INTERRUPTED, output
    assert "interrupted: stopping everything" in output
    assert not Path(base).exists()
    assert processes_using(base) == []


def test_keep_leaves_everything_running_as_printed_until_ctrl_c():
    # Started with SIGINT ignored (a shell script's `cmd &`): the demo's Ctrl-C holds all the
    # same (the ctrl-c test above covers the plain start).
    keep = ("--transfers", "10", "--keep")
    with demo_until("Ctrl-C stops them", *keep, sigint_ignored=True) as (proc, lines):
        output = "".join(lines)
        base = BASE_DIR.search(output)[1]
        # The printed command names the twostep beside the demo's Python: it runs as printed.
        status = re.search(r"^  (\S*twostep --coordinator .* status)$", output, re.MULTILINE)[1]
        assert status.split()[0] == str(TWOSTEP)
        result = subprocess.run(status.split(), capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "0 in-doubt" in result.stdout
        configs = dict(re.findall(r"(demo_pg|demo_maria) = (\{.*\})$", output, re.MULTILINE))
        committed = int(re.search(r"^10 transfers: (\d+) committed", output, re.MULTILINE)[1])
        pg = json.loads(configs["demo_pg"])
        with psycopg.connect(
            host=pg["host"], port=pg["port"], dbname=pg["database"], user=pg["username"]
        ) as conn:
            assert conn.execute("SELECT count(*) FROM transfers").fetchone() == (committed,)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output + rest
    assert not Path(base).exists()
    assert processes_using(base) == []


def test_missing_server_binaries_are_named_with_the_packages_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(_postgres, "PG_BIN", tmp_path / "no-postgres")
    monkeypatch.setattr(_mariadb, "MARIADBD", tmp_path / "no-mariadbd")
    result = CliRunner().invoke(cli, ["demo", "--transfers", "10"], env=demo_env())
    assert result.exit_code == demo.EXIT_SETUP_FAILED, result.output
    text = " ".join(result.output.split())
    assert "PostgreSQL binaries missing" in text and "MariaDB binaries missing" in text
    assert "apt-get install postgresql-15 mariadb-server" in text
    assert not Path(BASE_DIR.search(result.output)[1]).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transfers", "20", "--transfers", "30"], "--transfers is given twice"),
        (["--transfers", "5"], "5 is not in the range 10<=x<=100000"),
        (["--keep", "--keep"], "--keep is given twice"),
    ],
)
def test_bad_demo_options_are_usage_errors_before_anything_starts(args, message):
    result = CliRunner().invoke(cli, ["demo", *args], env=demo_env())
    assert result.exit_code == 2
    assert message in result.output
