"""A tiny WSGI app for tests/test_fork.py: the bank's transfers (tests/bank_worker.py) served
by gunicorn workers forked from a master that used twostep first.

    FORK_APP='<json settings>' gunicorn --preload -w 4 --chdir tests fork_app:app

Settings: bank_worker.py's `coordinator`, `pg`, `maria`, `journal`, `timeout`, `accounts`, and
- `warmup`: what the module does at import, that is in the master before it forks:
  "queries" (a count on each database) or "transaction" (one transfer, "master-0");
- `master_sessions`: a file where the master writes the server-side ids of the sessions its
  warm-up left in the pool (PostgreSQL backend pid, MariaDB connection id), so the test can
  check that no worker ended them.

`GET /transfer/ID` makes transfer ID (accounts and amount drawn from ID) and answers
"committed", or "not committed" (the journal says why).
"""

from __future__ import annotations

import json
import os
import random
import re

from bank_worker import MARIA, PG, Journal, transfer

from twostep.client import ConnectionManager, get_connection

settings = json.loads(os.environ["FORK_APP"])
ConnectionManager.configure(PG, settings["pg"])
ConnectionManager.configure(MARIA, settings["maria"])
journal = Journal(settings["journal"])  # O_APPEND: one line per write, from any worker

if settings["warmup"] == "transaction":
    if not transfer(settings, journal, "master-0", random.Random(0)):
        raise RuntimeError("the master's warm-up transfer did not commit")
else:
    get_connection(PG).execute("SELECT count(*) FROM accounts")
    get_connection(MARIA).execute("SELECT count(*) FROM accounts")
with open(settings["master_sessions"], "w") as out:
    # The most recently pooled session of each: the one the warm-up used last.
    pg_backend = get_connection(PG).execute("SELECT pg_backend_pid()")[0][0]
    maria_session = get_connection(MARIA).execute("SELECT CONNECTION_ID()")[0][0]
    json.dump({"pg": pg_backend, "maria": maria_session}, out)

_PATH = re.compile(r"/transfer/([a-z0-9-]{1,40})")


def app(environ: dict, start_response):  # type: ignore[no-untyped-def]
    match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
    if match is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such page\n"]
    tid = match[1]
    committed = transfer(settings, journal, tid, random.Random(tid))
    body = b"committed" if committed else b"not committed"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
