"""Smaller holes (issue 11, point 6): how `?` is read in MariaDB's NO_BACKSLASH_ESCAPES mode,
control characters in logs and CLI output, the reasons an Abort or Resolve may carry, and the
modes of the coordinator's files whatever the umask.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from test_connections import NO_BACKSLASH_ESCAPES

from twostep.client import Connection, StatementRefused
from twostep.client._cli import cli
from twostep.client._coordinator_client import MAX_REASON_CHARS, bounded_reason
from twostep.client._transaction import Transaction
from twostep.coordinator import CoordinatorServer, Settings, _wire
from twostep.coordinator._callers import read_tokens
from twostep.coordinator._datadir import DataDir
from twostep.coordinator._log_format import JsonFormatter, LogfmtFormatter
from twostep.coordinator.log import SqliteDecisionLog
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

# -- MariaDB's NO_BACKSLASH_ESCAPES --------------------------------------------------------------


@pytest.fixture(name="notes")
def notes_fixture(maria_config: dict[str, Any]) -> Connection:
    """A connection whose sessions are in NO_BACKSLASH_ESCAPES, on a table of two notes."""
    connection = Connection.from_config("notes", {**maria_config, "options": NO_BACKSLASH_ESCAPES})
    connection.execute("CREATE TABLE notes (id INT PRIMARY KEY, note TEXT)")
    connection.execute("INSERT INTO notes VALUES (1, '\\'), (2, 'secret')")
    return connection


def test_a_question_mark_the_server_reads_inside_a_string_is_no_parameter(notes: Connection):
    # The input: the server reads '\' as a whole string, so ' ? ' is a string too.
    # Read with backslash escapes, the `?` was a parameter pasted into the SQL: all rows.
    sql = "SELECT id FROM notes WHERE note = '\\' AND note = ' ? '"
    with pytest.raises(TypeError, match=r"0 \? placeholder"):
        notes.execute(sql, ["x' OR 1=1 -- "])
    assert notes.execute(sql) == []


def test_a_parameter_after_a_string_ending_in_a_backslash_is_bound(notes: Connection):
    sql = "SELECT id FROM notes WHERE note = '\\' OR id = ? ORDER BY id"
    assert notes.execute(sql, [2]) == [(1,), (2,)]
    assert notes.execute(sql, ["x' OR '1'='1"]) == [(1,)]  # bound, not pasted


def test_a_commit_hidden_behind_a_backslash_is_refused_inside_a_transaction(notes: Connection):
    # Default-mode reading: one string from '\' to the end. The server's reading: a COMMIT.
    with Transaction(notes), pytest.raises(StatementRefused, match="COMMIT"):
        notes.execute("SELECT '\\'; COMMIT; SELECT ' '")


# -- control characters in logs and CLI output -------------------------------------------------

WIDE = {"COLUMNS": "400"}  # every column of the tables fits
HOSTILE = "fine\r\x1b[2J\x1b]0;owned\x07[red]markup[/] \x85 end\nfake=line"


def test_a_log_line_carries_no_control_character_of_a_value():
    record = logging.makeLogRecord({"msg": "abort", "levelname": "INFO", "reason": HOSTILE})
    line = LogfmtFormatter().format(record)
    assert line.isprintable(), repr(line)
    assert 'reason="fine\\r\\x1b[2J\\x1b]0;owned\\x07[red]markup[/] \\x85 end\\nfake=line"' in line
    as_json = JsonFormatter().format(record)
    assert as_json.isprintable(), repr(as_json)
    assert json.loads(as_json)["reason"] == HOSTILE


def test_twostep_show_prints_a_hostile_reason_escaped(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        gtrid = stub.Begin(pb.BeginRequest(timeout_ms=60_000)).transactions[0].gtrid
        item = pb.AbortItem(gtrid=gtrid, reason=HOSTILE)
        stub.Abort(pb.AbortRequest(transactions=[item]), timeout=10)
    admin = ["--coordinator", coordinator.address, "--data-dir", str(coordinator.data_dir)]
    result = CliRunner().invoke(cli, [*admin, "show", gtrid], catch_exceptions=False, env=WIDE)
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", "")  # rich's own line breaks
    assert all(c.isprintable() for c in text), repr(result.output)
    # Shown as written, escaped: not run by the terminal, not read as rich markup.
    assert "\\x1b[2J" in text and "[red]markup[/]" in text and "\\x07" in text


# -- reasons ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        ("x" * 1001, "longer than 1000 characters"),
        ("file \udcff name", "not valid UTF-8"),
    ],
)
def test_a_reason_too_long_or_not_utf8_is_refused(reason, problem):
    assert problem in (_wire.reason_problem(reason) or "")
    assert _wire.reason_problem("ok: ünïcode, and a\ttab") is None


def test_the_client_makes_any_text_a_reason_the_coordinator_takes():
    assert MAX_REASON_CHARS == _wire.MAX_REASON_CHARS
    for text in ("x" * 5000, "file \udcff name", "plain"):
        assert _wire.reason_problem(bounded_reason(text)) is None
    assert bounded_reason("plain") == "plain"


def test_an_abort_with_a_reason_too_long_is_invalid_argument_and_records_nothing(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        gtrid = stub.Begin(pb.BeginRequest(timeout_ms=60_000)).transactions[0].gtrid
        coordinator.wait_for(gtrid, lambda t: True)  # Begin returns before its row is written
        item = pb.AbortItem(gtrid=gtrid, reason="x" * 1001)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Abort(pb.AbortRequest(transactions=[item]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        state = stub.GetTransaction(pb.GetTransactionRequest(gtrid=gtrid), timeout=10).state
        assert state == pb.TRANSACTION_STATE_ACTIVE


def test_twostep_resolve_refuses_a_reason_that_is_not_utf8_before_any_rpc():
    gtrid = "ts1.main.0." + "a" * 24
    args = ["--coordinator", "127.0.0.1:9", "--token", "t", "resolve", gtrid, "--commit"]
    result = CliRunner().invoke(cli, [*args, "--reason", "file \udcff name"])
    assert result.exit_code == 2 and "valid UTF-8" in result.output


# -- file modes ------------------------------------------------------------------------------


@pytest.fixture(name="no_umask")
def no_umask_fixture() -> Iterator[None]:
    before = os.umask(0)
    yield
    os.umask(before)


def test_the_data_dir_is_0700_and_its_files_0600_under_umask_0(tmp_path, no_umask):
    data_dir = tmp_path / "data"
    server = CoordinatorServer(Settings(listen="127.0.0.1:0", data_dir=data_dir))
    server.start()
    try:  # while it runs: SQLite removes its -wal and -shm files at the end
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}
    finally:
        server.stop(1)
    expected = {"decisions.sqlite3", "decisions.sqlite3-wal", "decisions.sqlite3-shm"}
    expected |= {"admin-token", "cluster-id", "coordinator.lock"}
    assert expected <= set(files)
    assert files == dict.fromkeys(files, 0o600), files


def test_an_existing_data_dir_and_log_are_made_private(tmp_path, no_umask):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o777)
    log = SqliteDecisionLog(data_dir)
    log.close()
    for path in (data_dir, *data_dir.iterdir()):
        path.chmod(0o777 if path.is_dir() else 0o644)
    DataDir(data_dir).close()
    SqliteDecisionLog(data_dir).close()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "decisions.sqlite3").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, False), (0o440, False), (0o640, False), (0o644, True), (0o660, True), (0o604, True)],
)
def test_a_token_file_others_may_read_is_warned_about_and_a_group_readable_one_is_not(
    tmp_path, caplog, mode, warned
):
    # Kubernetes mounts Secret files 0440 for the pod's group (fsGroup): no warning for that.
    path = tmp_path / "token"
    path.write_text("t" * 32 + "\n")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="twostep.coordinator"):
        assert read_tokens(path, "client_token_file") == ("t" * 32,)
    assert any("other users" in r.getMessage() for r in caplog.records) is warned
