"""log_format = "json": one JSON object per line, and the gtrid on every line about a transaction.

A real coordinator process (DEBUG, so that repeated recovery lines show too) with 'orders'
(PostgreSQL) and 'billing' (MariaDB) commits a global transaction, aborts an orphan, keeps a
COMMIT blocked on an unregistered resource and takes an operator's Resolve; then every line
it wrote must parse, and every line that names one of those gtrids anywhere must carry it as
its `gtrid`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import PurePosixPath

from test_heuristics import prepare_by_hand
from test_recovery import (  # noqa: F401
    ABORTED,
    COMMITTED,
    TOKEN,
    Client,
    dbs_fixture,
    shop_fixture,
    start_process,
    wait_until,
)

from twostep.client import get_connection, global_transaction
from twostep.coordinator._log_format import JsonFormatter
from twostep.v1 import admin_pb2 as apb
from twostep.v1 import coordinator_pb2 as pb

FIRST_KEYS = ["ts", "level", "logger", "msg"]


def test_every_line_is_json_and_lines_about_a_transaction_carry_its_gtrid(
    coordinator_factory, tmp_path, shop
):
    proc = start_process(
        coordinator_factory, tmp_path, shop, "jsonlogs", recovery_grace_s=0, log_format="json"
    )
    client = Client(proc.address)
    with global_transaction(coordinator=proc.address) as gtx:
        get_connection("orders").execute("INSERT INTO t (id) VALUES (1)")
        get_connection("billing").execute("INSERT INTO t (id) VALUES (1)")
    orphan = client.begin(timeout_ms=1)
    for name in ("orders", "billing"):
        prepare_by_hand(shop, name, orphan, 2)
    blocked = client.begin(timeout_ms=300_000)
    ghost = pb.Branch(resource="ghost", bqual="ghost", dialect="postgresql")
    assert client.commit(blocked, [ghost]).state == COMMITTED
    resolved = client.begin(timeout_ms=300_000)
    request = apb.ResolveRequest(gtrid=resolved, commit=False, reason="operator test")
    client.admin.Resolve(request, metadata=client.auth, timeout=30)
    wait_until(lambda: client.get(orphan).state == ABORTED, timeout=30, what="orphan aborted")
    wait_until(lambda: '"blocked: resource ghost' in proc.output, what="ghost reported")
    client.close()
    assert proc.stop() == 0

    lines = [line for line in proc.output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line parses
    assert all(isinstance(r, dict) and list(r)[:4] == FIRST_KEYS for r in records)
    assert [r["msg"] for r in records][-1] == "coordinator stopped"
    watched = {gtx.gtrid, orphan, blocked, resolved}
    named: dict[str, list[str]] = {gtrid: [] for gtrid in watched}
    for line, record in zip(lines, records, strict=True):
        for gtrid in watched:
            if gtrid in line:
                assert record.get("gtrid") == gtrid, line
                named[gtrid].append(record["msg"])
    # Not vacuous: recovery and the Admin service did log about these.
    assert "recovery action" in named[orphan]
    assert "recovery action" in named[blocked]
    assert "resolve accepted" in named[resolved]


def test_json_lines_keep_numbers_and_booleans_and_write_the_rest_as_text():
    try:
        raise ValueError("broken")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "twostep.coordinator", logging.WARNING, __file__, 1, "a %s", ("message",), exc_info
    )
    record.__dict__.update(
        rows=3, force=False, path=PurePosixPath("/var/lib/twostep"), why='say "no"\n'
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed)[:4] == FIRST_KEYS
    assert parsed["level"] == "WARNING" and parsed["msg"] == "a message"
    assert parsed["rows"] == 3 and parsed["force"] is False
    assert parsed["path"] == "/var/lib/twostep" and parsed["why"] == 'say "no"\n'
    assert parsed["exc"].startswith("Traceback") and "ValueError: broken" in parsed["exc"]
