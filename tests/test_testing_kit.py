"""twostep.testing as a user gets it: pip-installed into a fresh virtualenv, its pytest plugin
used by a test file outside the repo; loading it costs nothing until a fixture is asked for;
the client and coordinator never import it; and its failpoint helpers crash a real client
between prepare and commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest

from twostep.client import ConnectionManager, get_connection, global_transaction
from twostep.testing import config_toml, crash_at, run_in_process, start_in_process

REPO = Path(__file__).resolve().parent.parent
APP_TESTS = Path(__file__).with_name("fresh_user") / "shop_tests.py"
# What a checkout holds besides its source (a copy is built, so that pip's in-tree build
# writes nothing into this checkout, which other test runs may be building at the same time).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".ruff_cache"
)


def _fresh_virtualenv(where: Path) -> Path:
    """A new virtualenv (without system site-packages) with twostep pip-installed from a copy
    of this checkout (a regular, non-editable install: wheel built by the project's own build
    backend); returns its python.

    Its dependencies and pytest are the packages this test run already has, linked in one by
    one from this environment's site-packages through a .pth file, every twostep file left
    out: pip then installs with `--no-deps --no-index` (seconds, no network), and what is
    tested is the distribution itself (package list, folder mapping, package data, the
    `pytest11` entry point), which is what a fresh user's `pip install .` gets from this repo.
    """
    source = where / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    deps = where / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("twostep", "__editable__", "__pycache__")):
            (deps / entry.name).symlink_to(entry)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages" / "deps.pth").write_text(f"{deps}\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    install += ["--no-deps", "--no-index", "--no-build-isolation", str(source)]
    subprocess.run(install, check=True, capture_output=True)
    return python


def test_a_pip_installed_twostep_gives_a_test_file_outside_the_repo_its_fixtures(
    tmp_path: Path,
) -> None:
    python = _fresh_virtualenv(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(APP_TESTS, app / "test_shop.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWOSTEP_", "PYTHON"))}
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += [f"--basetemp={tmp_path / 'basetemp'}", "test_shop.py"]
    done = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout, done.stdout


def _imported_after(statement: str) -> set[str]:
    """The top-level names of the modules a fresh interpreter has loaded after `statement`."""
    probe = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_the_client_and_the_coordinator_never_import_twostep_testing_or_pytest() -> None:
    loaded = _imported_after("import twostep.client, twostep.coordinator, twostep.client.tpc")
    assert "twostep.coordinator._server" in loaded  # the probe did import them
    assert not {name for name in loaded if name.startswith("twostep.testing")}
    assert "pytest" not in loaded


def test_loading_the_plugin_imports_no_database_driver_and_no_grpc() -> None:
    loaded = _imported_after("import twostep.testing.plugin")
    assert "twostep.testing.plugin" in loaded
    assert not loaded & {"psycopg", "pymysql", "grpc", "twostep.client"}


def test_config_toml_reads_back_as_the_settings_and_resources_given() -> None:
    settings = {"cluster_id": "c1", "recovery_grace_s": 0, "kill_live_sessions": False}
    resources = {
        "orders": {
            "driver": "postgresql",
            "port": 5,
            "password": 'q"\\\n\x7fé😀',
            "options": {"a": 1},
        },
        "billing": {"driver": "mysql", "password": None},
    }
    parsed = tomllib.loads(config_toml(settings, resources))
    assert parsed == {
        "coordinator": settings,
        "resources": {
            "orders": resources["orders"],
            "billing": {"driver": "mysql"},  # None: left unset
        },
    }


# -- running a function in a fresh interpreter ------------------------------------------------
# (module-level functions: the child imports this module by name to find them)


def _add(a: int, b: int) -> int:
    return a + b


def _fail(why: str) -> None:
    raise LookupError(why)


def _armed_failpoints() -> list[str]:
    from twostep.client.tpc import failpoints

    return sorted(failpoints.armed())


def test_run_in_process_returns_what_the_function_returned() -> None:
    run = run_in_process(_add, args=(2,), kwargs={"b": 3})
    assert (run.returned, run.value, run.error, run.failpoint) == (True, 5, None, None)


def test_run_in_process_reports_an_exception_with_its_traceback() -> None:
    run = run_in_process(_fail, args=("no such order",))
    assert not run.returned and run.returncode == 1
    assert run.value is None
    assert "LookupError: no such order" in (run.error or "")


def test_run_in_process_arms_the_failpoints_in_the_child_only() -> None:
    run = run_in_process(
        _armed_failpoints, failpoints="client.before_prepare,client.after_decision"
    )
    assert run.value == ["client.after_decision", "client.before_prepare"]
    assert "TWOSTEP_FAILPOINTS" not in os.environ


def test_crash_at_refuses_an_unknown_failpoint() -> None:
    with pytest.raises(ValueError, match=r"client\.after_decison"):
        crash_at("client.after_decison", _add, args=(1, 2))


def test_crash_at_fails_when_the_function_ends_without_reaching_the_failpoint() -> None:
    with pytest.raises(AssertionError, match=r"not killed at client\.after_decision"):
        crash_at("client.after_decision", _add, args=(1, 2))


def _write_both(configs: dict[str, dict[str, Any]], coordinator: str, row: int) -> int:
    for name, config in configs.items():
        ConnectionManager.configure(name, config)
    with global_transaction(coordinator=coordinator, timeout=30):
        get_connection("orders").execute("INSERT INTO t (id) VALUES (?)", [row])
        get_connection("billing").execute("INSERT INTO t (id) VALUES (?)", [row])
    return row


@pytest.fixture
def two_databases(pg_config, maria_config):
    configs = {"orders": pg_config, "billing": maria_config}
    for name, config in configs.items():
        ConnectionManager.configure(name, config)
    get_connection("orders").execute("CREATE TABLE t (id INT PRIMARY KEY)")
    get_connection("billing").execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
    yield configs
    ConnectionManager.close_all()


def _rows(name: str) -> list[int]:
    return [row[0] for row in get_connection(name).execute("SELECT id FROM t ORDER BY id")]


def test_a_client_crashed_after_the_decision_is_committed_by_settle(
    two_databases, coordinator_factory, pg
) -> None:
    # No loop pass may finish the branch before the test has seen it prepared: settle() does.
    settings = {"recovery_grace_s": 0, "recovery_interval_s": 3600}
    coordinator = coordinator_factory(resources=two_databases, settings=settings)
    run = crash_at(
        "client.after_decision", _write_both, args=(two_databases, coordinator.address, 1)
    )
    assert run.killed and run.failpoint == "client.after_decision"
    database = two_databases["orders"]["database"]
    with pg.admin_connect() as conn:
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", [database])
        assert len(prepared.fetchall()) == 1
    assert coordinator.settle() >= 1
    assert (_rows("orders"), _rows("billing")) == ([1], [1])


def test_a_client_stopped_at_a_failpoint_goes_on_when_resumed(two_databases, coordinator) -> None:
    args = (two_databases, coordinator.address, 2)
    child = start_in_process(_write_both, args=args, failpoints="client.before_commit_request=stop")
    try:
        child.wait_stopped(30)
        assert (_rows("orders"), _rows("billing")) == ([], [])  # prepared, not committed
        child.resume()
        run = child.wait(30)
    finally:
        child.kill()
    assert (run.returned, run.value, run.failpoint) == (True, 2, "client.before_commit_request")
    assert (_rows("orders"), _rows("billing")) == ([2], [2])
