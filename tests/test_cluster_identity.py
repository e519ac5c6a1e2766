"""Two deployments never touch each other's branches (issue 6, item 8).

- The data directory is one coordinator's at a time (a lock file), and holds the cluster id:
  generated once unless configured, and a configured id that differs from it is refused.
- Every coordinator claims its cluster id on every registered resource (a MariaDB named lock,
  a PostgreSQL advisory lock): a second live coordinator with the same id on a shared
  database refuses to start, and recovery never touches a resource whose claim another holds.

Coordinator processes where the start or the refusal is what is checked; an in-process
coordinator (passes run by the test) where the sequence of recovery passes matters. The
databases are the real throwaway servers; helpers come from test_recovery.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tcp_proxy import TcpProxy
from test_recovery import (
    ABORTED,
    TOKEN,
    Client,
    Databases,
    dbs_fixture,  # noqa: F401 - the fixture "dbs"
    in_process_fixture,  # noqa: F401 - the fixture "in_process"
    new_cluster,
    prepare,
    wait_until,
)

from twostep.client.tpc import new_gtrid, parse_gtrid
from twostep.coordinator import (
    Begun,
    CoordinatorServer,
    DataDirInUse,
    Settings,
    SqliteDecisionLog,
)
from twostep.coordinator._registry import parse_resources

GENERATED = re.compile(r"c[a-z2-7]{15}")


def run_coordinator(*args: str) -> subprocess.CompletedProcess:
    """A coordinator that is expected to refuse to start (it is killed after 30 s if not)."""
    return subprocess.run(
        [sys.executable, "-m", "twostep.coordinator", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")},
            "TWOSTEP_ADMIN_TOKEN": TOKEN,
        },
    )


def config_file(path: Path, resources: dict[str, dict[str, Any]], **coordinator: Any) -> Path:
    lines = ["[coordinator]", *(f"{k} = {_toml(v)}" for k, v in coordinator.items())]
    for name, config in resources.items():
        lines += ["", f"[resources.{name}]", *(f"{k} = {_toml(v)}" for k, v in config.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


@pytest.fixture
def other_maria_database(maria) -> Iterator[dict[str, Any]]:
    """A second fresh database on the MariaDB server that `dbs` uses ('billing' is the first)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    maria.create_database(name)
    yield maria.config(name)
    maria.drop_database(name)


# -- the data directory ------------------------------------------------------------------------


def test_a_second_coordinator_on_the_same_data_dir_refuses_to_start(coordinator_factory, tmp_path):
    first = coordinator_factory(tmp_path / "data")
    second = run_coordinator("--data-dir", str(tmp_path / "data"))
    assert second.returncode == 1, second.stderr
    where = (tmp_path / "data").resolve()
    assert f"data directory {where} is in use by another coordinator (pid {first.pid}" in (
        second.stderr
    )
    # In the same process too (an embedding application), and free again once stopped.
    with pytest.raises(DataDirInUse, match="in use by another coordinator"):
        CoordinatorServer(Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    first.stop()
    server = CoordinatorServer(Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    server.start()
    assert server.settings.cluster_id == first.cluster_id
    with pytest.raises(DataDirInUse):
        CoordinatorServer(Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    server.stop(1)


def test_without_a_configured_id_each_data_dir_generates_its_own_cluster_id_once(
    coordinator_factory, tmp_path
):
    a = coordinator_factory(tmp_path / "a")
    b = coordinator_factory(tmp_path / "b")
    assert GENERATED.fullmatch(a.cluster_id) and GENERATED.fullmatch(b.cluster_id)
    assert a.cluster_id != b.cluster_id
    assert (tmp_path / "a" / "cluster-id").read_text().strip() == a.cluster_id
    generated = a.cluster_id
    a.restart()
    assert a.cluster_id == generated
    gtrid = Client(a.address).begin(timeout_ms=1000)
    assert parse_gtrid(gtrid).cluster == generated


def test_a_configured_cluster_id_that_differs_from_the_data_dirs_is_refused(
    coordinator_factory, tmp_path
):
    blue = coordinator_factory(tmp_path / "blue", args=["--cluster-id", "blue"])
    assert blue.cluster_id == "blue"
    assert (tmp_path / "blue" / "cluster-id").read_text().strip() == "blue"
    blue.stop()
    refused = run_coordinator("--data-dir", str(tmp_path / "blue"), "--cluster-id", "green")
    assert refused.returncode == 2, refused.stderr
    assert "cluster id 'green' is configured" in refused.stderr
    assert f"{(tmp_path / 'blue').resolve()} belongs to cluster 'blue'" in refused.stderr
    blue.args = []  # no id configured: the data dir's own
    blue.start()
    assert blue.cluster_id == "blue"
    blue.stop()

    generated = coordinator_factory(tmp_path / "generated")
    generated.stop()
    refused = run_coordinator("--data-dir", str(tmp_path / "generated"), "--cluster-id", "blue")
    assert refused.returncode == 2, refused.stderr
    assert f"belongs to cluster {generated.cluster_id!r}" in refused.stderr


def test_a_data_dir_from_before_the_cluster_id_file_keeps_the_cluster_of_its_log(
    coordinator_factory, tmp_path
):
    # A log written by an older coordinator that ran with the old default id "main".
    old = SqliteDecisionLog(tmp_path / "old")
    gtrid = new_gtrid("main", int(time.time()) + 3600)
    old.record_begun([Begun(gtrid, int(time.time() * 1000), (int(time.time()) + 3600) * 1000)])
    old.close()

    refused = run_coordinator("--data-dir", str(tmp_path / "old"), "--cluster-id", "prod")
    assert refused.returncode == 2, refused.stderr
    assert "belongs to cluster 'main' (the gtrids of" in refused.stderr
    assert not (tmp_path / "old" / "cluster-id").exists()

    proc = coordinator_factory(tmp_path / "old")
    assert proc.cluster_id == "main"
    assert (tmp_path / "old" / "cluster-id").read_text().strip() == "main"
    assert "kept the cluster id of the existing decision log" in proc.output
    assert Client(proc.address).get(gtrid).gtrid == gtrid  # its transactions are still its own


# -- the claim on shared databases -------------------------------------------------------------


@pytest.mark.parametrize("shared", ["postgresql database", "mariadb server"])
def test_a_second_coordinator_with_the_same_cluster_id_on_a_shared_database_refuses_to_start(
    coordinator_factory, tmp_path, dbs: Databases, other_maria_database, shared
):
    cluster = new_cluster()
    first_config = config_file(tmp_path / "first.toml", dbs.configs, cluster_id=cluster)
    first = coordinator_factory(tmp_path / "first", args=["--config", str(first_config)])
    # PostgreSQL: the same database. MariaDB: another database, on the same server, whose
    # XA RECOVER lists the first coordinator's branches just the same.
    if shared == "postgresql database":
        name, resource = "orders", dbs.configs["orders"]
    else:
        name, resource = "ledger", other_maria_database
    second_config = config_file(tmp_path / "second.toml", {name: resource}, cluster_id=cluster)
    second_dir = tmp_path / "second"
    refused = run_coordinator("--data-dir", str(second_dir), "--config", str(second_config))
    assert refused.returncode == 1, refused.stderr
    assert f"cluster id {cluster!r} is claimed on resource {name}" in refused.stderr
    assert "another live coordinator uses this cluster id" in refused.stderr

    first.stop()  # its sessions end, and with them its claims
    second = coordinator_factory(second_dir, args=["--config", str(second_config)])
    assert second.cluster_id == cluster


def test_another_postgresql_database_of_the_same_server_is_no_shared_resource(
    coordinator_factory, tmp_path, dbs: Databases, pg
):
    # PostgreSQL recovery only scans its own database, so the same cluster id elsewhere on the
    # server never meets this one's branches, and the claim does not refuse it.
    cluster = new_cluster()
    first_config = config_file(tmp_path / "first.toml", dbs.configs, cluster_id=cluster)
    coordinator_factory(tmp_path / "first", args=["--config", str(first_config)])
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg.create_database(name)
    try:
        config = config_file(tmp_path / "b.toml", {"orders": pg.config(name)}, cluster_id=cluster)
        second = coordinator_factory(tmp_path / "second", args=["--config", str(config)])
        assert second.cluster_id == cluster
        second.stop()
    finally:
        pg.drop_database(name)


def test_coordinators_without_a_configured_cluster_id_share_databases_without_conflict(
    coordinator_factory, tmp_path, dbs: Databases
):
    config = config_file(tmp_path / "shared.toml", dbs.configs)
    a = coordinator_factory(tmp_path / "a", args=["--config", str(config)])
    b = coordinator_factory(tmp_path / "b", args=["--config", str(config)])
    assert a.cluster_id != b.cluster_id
    for proc in (a, b):
        client = Client(proc.address, token=(proc.data_dir / "admin-token").read_text().strip())
        client.recover()
        status = client.status()
        assert [(r.name, r.reachable, r.error) for r in status.resources] == [
            ("billing", True, ""),
            ("orders", True, ""),
        ]
        client.close()


def test_one_coordinator_may_register_several_resources_on_one_server(
    in_process, dbs: Databases, other_maria_database, tmp_path
):
    configs = {
        **dbs.configs,
        "ledger": other_maria_database,  # same MariaDB server as billing
        "orders-too": dbs.configs["orders"],  # same PostgreSQL database as orders
    }
    resources = parse_resources(configs, source="test", environ={}, base_dir=tmp_path)
    c = in_process(resources=resources)  # start() took the claims: none refused
    c.recovery.run_pass()
    status = c.client.status()
    assert [(r.name, r.reachable, r.error) for r in status.resources] == [
        ("billing", True, ""),
        ("ledger", True, ""),
        ("orders", True, ""),
        ("orders-too", True, ""),
    ]


def test_recovery_never_touches_a_resource_whose_claim_another_coordinator_holds(
    coordinator_factory, in_process, dbs: Databases, tmp_path
):
    cluster = new_cluster()
    # The holder: a live coordinator with this cluster id whose loop never runs a second pass.
    holder_config = config_file(
        tmp_path / "holder.toml", dbs.configs, cluster_id=cluster, recovery_interval_s=3600
    )
    holder = coordinator_factory(tmp_path / "holder", args=["--config", str(holder_config)])

    # This coordinator reaches the databases through proxies that refuse connections at its
    # start: it cannot check its claim, warns, and starts.
    with contextlib.ExitStack() as stack:
        proxies = {
            name: stack.enter_context(TcpProxy(int(config["port"])))
            for name, config in dbs.configs.items()
        }
        for proxy in proxies.values():
            proxy.block()
        proxied = {
            name: {**config, "port": proxies[name].port, "connect_timeout": 2}
            for name, config in dbs.configs.items()
        }
        resources = parse_resources(proxied, source="test", environ={}, base_dir=tmp_path)
        c = in_process(cluster_id=cluster, resources=resources)

        gtrid = c.begin(timeout_ms=1000)
        held = [prepare(dbs, "orders", gtrid, 1), prepare(dbs, "billing", gtrid, 1)]
        c.clock.advance(5_000)  # orphans past their deadline: recovery would abort them
        for proxy in proxies.values():
            proxy.unblock()
        for _ in range(3):
            report = c.recovery.run_pass(eager=True)
        assert all(f"cluster id {cluster!r} is claimed" in e for e in report.errors)
        assert held[0].xid in dbs.prepared("orders") and held[1].xid in dbs.prepared("billing")
        status = c.client.status()
        for resource in status.resources:
            assert not resource.reachable
            assert "claimed on resource" in resource.error and "another session" in resource.error

        # Meanwhile its log expired the transaction (ABORT, nothing found prepared): deciding
        # touches no database. Its branches go once the claims are taken, after the grace.
        assert c.client.get(gtrid).state == ABORTED
        holder.stop()  # its sessions end (the servers notice soon after), and its claims
        wait_until(lambda: not c.recovery.run_pass(eager=True).errors, what="the claims taken")
        c.clock.advance(1_000)  # the recovery grace after the decision
        c.recovery.run_pass(eager=True)
        assert held[0].xid not in dbs.prepared("orders")
        assert held[1].xid not in dbs.prepared("billing")
        assert dbs.rows("orders") == dbs.rows("billing") == set()
        assert [r.error for r in c.client.status().resources] == ["", ""]
