"""The coordinator as a process: start line, crashes, failpoints, restarts, shutdown, settings.

Each test runs `python -m twostep.coordinator` through the `coordinator_factory` fixture
(twostep.testing, through its pytest plugin) on a fresh data dir; no databases.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from twostep.client.tpc import new_gtrid
from twostep.coordinator import ConfigError, Settings, load_settings
from twostep.testing import CoordinatorProcess, _coordinator
from twostep.testing._processes import is_stopped
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

COMMITTED = pb.TRANSACTION_STATE_COMMITTED
ABORTED = pb.TRANSACTION_STATE_ABORTED
ACTIVE = pb.TRANSACTION_STATE_ACTIVE
RPC_TIMEOUT = 10.0

Factory = Callable[..., CoordinatorProcess]


class Client:
    """One channel to a coordinator, kept across its restarts (the port stays the same)."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def begin(self, timeout_ms: int) -> pb.Started:
        request = pb.BeginRequest(timeout_ms=timeout_ms)
        return self.stub.Begin(request, timeout=RPC_TIMEOUT, wait_for_ready=True).transactions[0]

    def commit(self, gtrid: str) -> pb.Decision:
        branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
        request = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[branch])])
        reply = self.stub.Commit(request, timeout=RPC_TIMEOUT, wait_for_ready=True)
        return reply.decisions[0]

    def get(self, gtrid: str) -> pb.Transaction:
        request = pb.GetTransactionRequest(gtrid=gtrid)
        return self.stub.GetTransaction(request, timeout=RPC_TIMEOUT, wait_for_ready=True)

    def wait_durable(self, gtrid: str) -> None:
        """Until the log's readers see the row, i.e. its batch is committed and fsynced."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self.get(gtrid)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def client_of() -> Iterator[Callable[[CoordinatorProcess], Client]]:
    made: list[Client] = []

    def connect(proc: CoordinatorProcess) -> Client:
        made.append(Client(proc.address))
        return made[-1]

    yield connect
    for client in made:
        client.close()


def sleep_past(deadline_unix_ms: int) -> None:
    time.sleep(max(0.0, deadline_unix_ms / 1000 - time.time()) + 0.05)


# -- the start line ----------------------------------------------------------------------------


def test_start_line_names_the_listen_address_cluster_and_decision_log(
    coordinator_factory: Factory, tmp_path: Path
):
    proc = coordinator_factory(tmp_path / "data", args=["--cluster-id", "blue"])
    assert f"listen={proc.address}" in proc.start_line
    assert proc.port and proc.port != 0
    assert "cluster=blue" in proc.start_line
    assert proc.log_path == (tmp_path / "data" / "decisions.sqlite3").resolve()
    assert proc.log_path.exists()
    infos = [line for line in proc.output.splitlines() if "level=INFO" in line]
    assert infos == [proc.start_line]


# -- crashes and failpoints --------------------------------------------------------------------


def test_a_committed_decision_survives_sigkill_and_restart(coordinator_factory, client_of):
    proc = coordinator_factory()
    client = client_of(proc)
    gtrid = client.begin(60_000).gtrid
    assert client.commit(gtrid).state == COMMITTED
    proc.kill()
    proc.restart()
    assert client.get(gtrid).state == COMMITTED
    assert client.commit(gtrid).state == COMMITTED


def test_commit_killed_after_its_fsync_fails_for_the_client_but_is_committed_after_restart(
    coordinator_factory, client_of
):
    proc = coordinator_factory(failpoints="coordinator.after_decision_fsync")
    client = client_of(proc)
    gtrid = client.begin(60_000).gtrid
    with pytest.raises(grpc.RpcError) as lost:
        client.commit(gtrid)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.wait_exit(10) == -9
    assert "failpoint coordinator.after_decision_fsync hit" in proc.output
    proc.restart(failpoints="")
    assert client.get(gtrid).state == COMMITTED
    assert client.commit(gtrid).state == COMMITTED


def test_commit_killed_before_its_fsync_is_not_decided_and_ends_aborted_after_the_deadline(
    coordinator_factory, client_of
):
    proc = coordinator_factory(failpoints="coordinator.before_decision_fsync")
    client = client_of(proc)
    started = client.begin(2_000)
    client.wait_durable(started.gtrid)  # Begin itself is not a decision: no failpoint
    with pytest.raises(grpc.RpcError) as lost:
        client.commit(started.gtrid)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.wait_exit(10) == -9
    proc.restart(failpoints="")
    assert client.get(started.gtrid).state == ACTIVE  # the COMMIT never reached the disk
    sleep_past(started.deadline_unix_ms)
    decision = client.commit(started.gtrid)
    assert (decision.state, decision.reason) == (ABORTED, "deadline passed")
    assert client.get(started.gtrid).state == ABORTED


def test_a_durable_undecided_transaction_stays_decidable_after_restart(
    coordinator_factory, client_of
):
    proc = coordinator_factory()
    client = client_of(proc)
    gtrid = client.begin(60_000).gtrid
    client.wait_durable(gtrid)
    proc.kill()
    proc.restart()
    assert client.get(gtrid).state == ACTIVE
    assert client.commit(gtrid).state == COMMITTED  # before its deadline: still free to commit


def test_a_durable_undecided_transaction_is_aborted_after_restart_past_its_deadline(
    coordinator_factory, client_of
):
    proc = coordinator_factory()
    client = client_of(proc)
    started = client.begin(1_000)
    client.wait_durable(started.gtrid)
    proc.kill()
    sleep_past(started.deadline_unix_ms)
    proc.restart()
    assert client.commit(started.gtrid).state == ABORTED


def test_a_begin_lost_in_a_crash_makes_the_gtrid_unknown_and_aborted_at_once(
    coordinator_factory, client_of
):
    proc = coordinator_factory()
    client = client_of(proc)
    # A stalled disk: an outside writer holds the log's write lock, so the Begin's row waits.
    outsider = sqlite3.connect(proc.log_path, isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    try:
        started = client.begin(60_000)  # answered although its row is not written
        proc.kill()
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    proc.restart()
    with pytest.raises(grpc.RpcError) as missing:
        client.get(started.gtrid)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    decision = client.commit(started.gtrid)  # long before its deadline
    assert (decision.state, decision.reason) == (ABORTED, "unknown transaction")


# -- shutdown ----------------------------------------------------------------------------------


def test_sigterm_lets_a_commit_in_flight_finish_then_exits_cleanly(coordinator_factory, client_of):
    proc = coordinator_factory(failpoints="coordinator.before_decision_fsync=stop")
    client = client_of(proc)
    gtrid = client.begin(60_000).gtrid
    answers: list[pb.Decision | Exception] = []

    def commit() -> None:
        try:
            answers.append(client.commit(gtrid))
        except Exception as exc:
            answers.append(exc)

    caller = threading.Thread(target=commit)
    caller.start()
    # The process stops itself with the decision in its log's writer, before the fsync; the
    # SIGTERM sent then waits for the SIGCONT.
    deadline = time.monotonic() + 10
    while not is_stopped(proc.pid):
        assert time.monotonic() < deadline, "the Commit did not reach the log's writer"
        time.sleep(0.01)
    proc.terminate()
    os.kill(proc.pid, signal.SIGCONT)
    caller.join(RPC_TIMEOUT)
    assert proc.wait_exit(20) == 0
    assert [getattr(a, "state", a) for a in answers] == [COMMITTED]
    assert 'msg="coordinator stopped"' in proc.output
    proc.restart(failpoints="")
    assert client.get(gtrid).state == COMMITTED


def test_stop_returns_once_the_output_holds_every_line_the_process_wrote(
    coordinator_factory, monkeypatch
):
    proc = coordinator_factory()
    parse = _coordinator._start_fields

    def starved(line: str) -> dict[str, str] | None:  # a reader thread a busy machine starves
        time.sleep(1.0)
        return parse(line)

    monkeypatch.setattr(_coordinator, "_start_fields", starved)
    assert proc.stop() == 0
    assert 'msg="coordinator stopped"' in proc.output.splitlines()[-1]


def test_the_stopped_line_counts_the_log_writes_and_fsyncs_since_the_start(
    coordinator_factory, client_of
):
    proc = coordinator_factory()
    client = client_of(proc)
    gtrids = [client.begin(60_000).gtrid for _ in range(3)]
    assert [client.commit(g).state for g in gtrids] == [COMMITTED] * 3
    assert proc.stop() == 0
    (line,) = [line for line in proc.output.splitlines() if 'msg="coordinator stopped"' in line]
    counters = {
        key: int(value)
        for key, _, value in (pair.partition("=") for pair in line.split())
        if key.startswith("log_")
    }
    assert set(counters) == {
        "log_requests",
        "log_items",
        "log_batches",
        "log_fsyncs",
        "log_failed_batches",
    }
    assert counters["log_requests"] >= 6  # three Begins and three decisions, at least
    assert counters["log_items"] >= 6
    assert 1 <= counters["log_batches"] <= counters["log_requests"]
    assert 1 <= counters["log_fsyncs"] <= counters["log_batches"]  # decisions are synced
    assert counters["log_failed_batches"] == 0


def test_a_second_coordinator_cannot_take_a_port_in_use(coordinator_factory, tmp_path):
    first = coordinator_factory(tmp_path / "one")
    second = run_coordinator("--listen", first.address, "--data-dir", str(tmp_path / "two"))
    assert second.returncode == 1
    assert "cannot start" in second.stderr


# -- settings ----------------------------------------------------------------------------------


def run_coordinator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
    return subprocess.run(
        [sys.executable, "-m", "twostep.coordinator", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environ, **(env or {})},
    )


def test_help_explains_every_setting_with_its_environment_variable():
    result = run_coordinator("--help")
    assert result.returncode == 0
    for flag, env in [
        ("--config", "TWOSTEP_CONFIG"),
        ("--listen", "TWOSTEP_LISTEN"),
        ("--data-dir", "TWOSTEP_DATA_DIR"),
        ("--cluster-id", "TWOSTEP_CLUSTER_ID"),
        ("--default-timeout", "TWOSTEP_DEFAULT_TIMEOUT"),
        ("--max-timeout", "TWOSTEP_MAX_TIMEOUT"),
        ("--max-batch", "TWOSTEP_MAX_BATCH"),
        ("--workers", "TWOSTEP_WORKERS"),
        ("--retention", "TWOSTEP_RETENTION"),
    ]:
        assert flag in result.stdout and env in result.stdout


@pytest.mark.parametrize(
    "args, env, named",
    [
        (["--cluster-id", "Not_Valid"], {}, "flag --cluster-id"),
        ([], {"TWOSTEP_CLUSTER_ID": "local"}, "environment TWOSTEP_CLUSTER_ID"),
        ([], {"TWOSTEP_MAX_TIMEOUT": "soon"}, "environment TWOSTEP_MAX_TIMEOUT"),
        (["--listen", "nowhere"], {}, "flag --listen"),
        (["--workers", "0"], {}, "flag --workers"),
        (["--default-timeout", "500"], {}, "max timeout"),
        (["--config", "/nonexistent/twostep.toml"], {}, "cannot read config file"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
    ],
)
def test_an_invalid_setting_is_named_and_exits_with_status_2(args, env, named, tmp_path):
    result = run_coordinator("--data-dir", str(tmp_path / "unused"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert not (tmp_path / "unused").exists()


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path):
    config = tmp_path / "twostep.toml"
    config.write_text(
        '[coordinator]\nlisten = "127.0.0.1:7001"\ncluster_id = "from-file"\n'
        "max_timeout_s = 60\nworkers = 4\n"
    )
    environ = {"TWOSTEP_CLUSTER_ID": "from-env", "TWOSTEP_WORKERS": "8"}
    settings = load_settings(["--config", str(config), "--workers", "16"], environ)
    assert settings == Settings(
        listen="127.0.0.1:7001",  # file
        cluster_id="from-env",  # environment over file
        max_timeout_ms=60_000,  # file, in seconds there
        workers=16,  # flag over environment and file
    )
    assert load_settings([], {}) == Settings()


def test_an_unknown_key_in_the_config_file_is_an_error(tmp_path: Path):
    config = tmp_path / "twostep.toml"
    config.write_text('[coordinator]\nlisen = "127.0.0.1:7001"\n')
    with pytest.raises(ConfigError, match=r"unknown setting.*lisen"):
        load_settings(["--config", str(config)], {})


MISTAKES = {
    "misspelled coordinator table": (
        '[coordinatr]\nlisten = "127.0.0.1:7001"\n',
        "unknown table [coordinatr], did you mean [coordinator]?",
    ),
    "singular resource table": (
        '[resource.orders]\ndriver = "postgresql"\n[resource.billing]\ndriver = "mysql"\n',
        "unknown tables [resource.orders], [resource.billing], did you mean [resources]?",
    ),
    "key outside any table": (
        'cluster_id = "prod"\n[coordinator]\nlisten = "127.0.0.1:7001"\n',
        "unknown top-level key 'cluster_id': settings go in [coordinator]",
    ),
    "capitalized table": ("[Coordinator]\nworkers = 4\n", "unknown table [Coordinator]"),
    "unrelated table": ('[coordinator]\n\n[logging]\nlevel = "DEBUG"\n', "unknown table [logging]"),
    "array of tables": ("[[coordinators]]\nworkers = 4\n", "unknown top-level key 'coordinators'"),
    "resource outside its table": ('[resources]\norders = "x"\n', "[resources.orders]"),
}


@pytest.mark.parametrize("text, named", MISTAKES.values(), ids=MISTAKES.keys())
def test_every_unknown_table_or_top_level_key_in_the_config_file_is_an_error(
    text: str, named: str, tmp_path: Path
):
    config = tmp_path / "twostep.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(["--config", str(config)], {})
    assert named in str(error.value) and str(config) in str(error.value)


def test_a_misspelled_table_stops_the_coordinator_with_status_2(tmp_path: Path):
    config = tmp_path / "twostep.toml"
    config.write_text('[coordinatr]\ncluster_id = "prod"\nlisten = "127.0.0.1:7001"\n')
    result = run_coordinator("--config", str(config), "--data-dir", str(tmp_path / "unused"))
    assert result.returncode == 2, result.stderr
    assert "unknown table [coordinatr], did you mean [coordinator]?" in result.stderr
    assert not (tmp_path / "unused").exists()


def test_an_unknown_gtrid_never_begun_is_aborted_by_a_fresh_coordinator(
    coordinator_factory, client_of
):
    proc = coordinator_factory()
    client = client_of(proc)
    gtrid = new_gtrid(proc.cluster_id, int(time.time()) + 60)  # a deadline Begin could give
    assert client.commit(gtrid).state == ABORTED
