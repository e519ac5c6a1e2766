"""One client process of the bank workload (see bank.py), so that a test can SIGKILL it.

    python tests/bank_worker.py '<json settings>'

Settings: `coordinator` (address), `pg` and `maria` (client connection configs), `journal`
(a file path), `transfers` (per thread), `threads`, `timeout` (seconds per transfer), `seed`,
`tag` (prefix of the transfer ids), `accounts` (how many per database). Client failpoints come
from TWOSTEP_FAILPOINTS, like in any twostep process.

Each transfer, in one `global_transaction()`: debit an account on PostgreSQL and credit one on
MariaDB, and write the transfer id on both sides. The journal gets one line per event, written
with a single write(2) on an O_APPEND file, so a SIGKILL loses no line that was written:

    attempt ID          before the block starts
    gtrid ID GTRID      the block's statements all ran (before prepare)
    committed ID        global_transaction() returned, or raised PhaseTwoIncomplete
    aborted ID WHY      nothing was committed (an exception in the block, TransactionAborted,
                        CoordinatorUnavailable)
    unknown ID WHY      the outcome is the coordinator's to tell (OutcomeUnknown, anything else)
    heuristic ID WHY    HeuristicOutcome
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from typing import Any

from twostep.client import (
    ConnectionManager,
    CoordinatorUnavailable,
    HeuristicOutcome,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    TransactionAborted,
    TwostepError,
    get_connection,
    global_transaction,
)

PG = "bank_pg"  # the resource names the coordinator knows them by (bank.py)
MARIA = "bank_maria"


class Journal:
    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, *fields: object) -> None:
        line = " ".join(str(f).replace("\n", " ") for f in fields)
        os.write(self._fd, (line + "\n").encode())


def transfer(settings: dict[str, Any], journal: Journal, tid: str, rng: random.Random) -> bool:
    """One transfer; whether the client saw it committed."""
    debit, credit = rng.randrange(settings["accounts"]), rng.randrange(settings["accounts"])
    amount = rng.randint(1, 100)
    pg, maria = get_connection(PG), get_connection(MARIA)
    journal.write("attempt", tid)
    in_block = True
    try:
        with global_transaction(settings["coordinator"], timeout=settings["timeout"]) as gtx:
            pg.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, debit))
            pg.execute(
                "INSERT INTO transfers (id, account, amount) VALUES (?, ?, ?)",
                (tid, debit, amount),
            )
            maria.execute(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, credit)
            )
            maria.execute(
                "INSERT INTO transfers (id, account, amount) VALUES (?, ?, ?)",
                (tid, credit, amount),
            )
            journal.write("gtrid", tid, gtx.gtrid)
            in_block = False
    except PhaseTwoIncomplete:
        journal.write("committed", tid, "phase two incomplete")
        return True
    except HeuristicOutcome as exc:
        journal.write("heuristic", tid, exc)
    except OutcomeUnknown as exc:
        journal.write("unknown", tid, exc)
    except (TransactionAborted, CoordinatorUnavailable) as exc:
        journal.write("aborted", tid, type(exc).__name__, exc)
    except Exception as exc:
        # Raised inside the block: global_transaction() rolled everything back.
        verdict = "aborted" if in_block else "unknown"
        journal.write(verdict, tid, type(exc).__name__, exc)
        if not isinstance(exc, TwostepError):  # not one of twostep's own: show where
            traceback.print_exc()
    else:
        journal.write("committed", tid)
        return True
    return False


def run_thread(settings: dict[str, Any], journal: Journal, number: int) -> None:
    rng = random.Random(f"{settings['seed']}-{number}")
    for n in range(settings["transfers"]):
        if not transfer(settings, journal, f"{settings['tag']}-{number}-{n}", rng):
            time.sleep(rng.uniform(0.02, 0.1))  # like an application: no hot retry loop


def main() -> None:
    settings = json.loads(sys.argv[1])
    ConnectionManager.configure(PG, settings["pg"])
    ConnectionManager.configure(MARIA, settings["maria"])
    journal = Journal(settings["journal"])
    threads = [
        threading.Thread(target=run_thread, args=(settings, journal, i), daemon=True)
        for i in range(settings["threads"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ConnectionManager.close_all()


if __name__ == "__main__":
    main()
