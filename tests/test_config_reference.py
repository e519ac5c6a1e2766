"""`twostep-coordinator --print-config-reference` (docs/config.md) and `--health-check`.

The reference is generated from the settings schema in coordinator/_config.py; the health
check's SERVING answer from a running coordinator is proven in test_deploy_files.py, through
the image's own HEALTHCHECK command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from twostep.coordinator import describe_settings

ROOT = Path(__file__).resolve().parents[1]


def coordinator_cli(*args: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("twostep-coordinator", path=str(Path(sys.executable).parent))
    assert program, "twostep is not installed in this environment"
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=30, check=False)


def test_docs_config_md_is_the_generated_settings_reference():
    result = coordinator_cli("--print-config-reference")
    assert result.returncode == 0, result.stderr
    expected = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert result.stdout == expected, (
        "docs/config.md is out of date: twostep-coordinator --print-config-reference "
        "> docs/config.md"
    )


def test_the_settings_reference_documents_every_setting_once_by_key_and_environment():
    reference = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for doc in describe_settings():
        assert reference.count(f"## `{doc.key}`\n") == 1
        assert reference.count(f"`{doc.env}`") == 1


def test_health_check_of_an_address_where_nothing_listens_exits_1_saying_unavailable():
    result = coordinator_cli("--health-check", "127.0.0.1:1")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and result.stdout == ""


def test_health_check_of_a_malformed_address_is_a_usage_error():
    result = coordinator_cli("--health-check", "no-port")
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
