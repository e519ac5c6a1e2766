"""A client process for tests/test_enlist_crash.py: one global transaction over the
application's own sessions, so that a client failpoint can kill it between prepare and commit.

    python tests/enlist_worker.py '<json settings>'

Settings: `coordinator` (address), `pg` and `maria` (client connection configs), `mode`
("drivers": a psycopg and a PyMySQL connection, `gtx.enlist`; "sqlalchemy": one Session over
two enlisted engines), `gtrid_file` (the gtrid is written there once the block's statements
ran). Writes the order id 1 (total 30) on PostgreSQL and its invoice on MariaDB. Failpoints
come from TWOSTEP_FAILPOINTS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import sqlalchemy as sa
from sqlalchemy.orm import Session

from twostep.client import global_transaction
from twostep.client.sqlalchemy import enlist_engine

PG = "enl_pg"  # the resource names the coordinator knows the databases by
MARIA = "enl_maria"


def url(driver: str, config: dict[str, Any]) -> sa.URL:
    return sa.URL.create(
        driver,
        username=config["username"],
        password=config.get("password") or None,
        host=config["host"],
        port=config["port"],
        database=config["database"],
    )


def with_drivers(settings: dict[str, Any], done: Path) -> None:
    pg, my = settings["pg"], settings["maria"]
    pgc = psycopg.connect(str(url("postgresql", pg).render_as_string(hide_password=False)))
    myc = pymysql.connect(
        host=my["host"],
        port=my["port"],
        user=my["username"],
        password=my.get("password") or "",
        database=my["database"],
    )
    with global_transaction(coordinator=settings["coordinator"], timeout=3) as gtx:
        gtx.enlist(pgc, resource=PG)
        gtx.enlist(myc, resource=MARIA)
        pgc.execute("INSERT INTO orders VALUES (1, 30)")
        with myc.cursor() as cur:
            cur.execute("INSERT INTO invoices VALUES (1, 30)")
        done.write_text(gtx.gtrid or "")


def with_sqlalchemy(settings: dict[str, Any], done: Path) -> None:
    pg_engine = sa.create_engine(url("postgresql+psycopg", settings["pg"]))
    my_engine = sa.create_engine(url("mysql+pymysql", settings["maria"]))
    enlist_engine(pg_engine, resource=PG)
    enlist_engine(my_engine, resource=MARIA)
    orders = sa.table("orders", sa.column("id"), sa.column("total"))
    invoices = sa.table("invoices", sa.column("order_id"), sa.column("amount"))
    session = Session()
    with global_transaction(coordinator=settings["coordinator"], timeout=3) as gtx:
        session.execute(
            sa.insert(orders).values(id=1, total=30), bind_arguments={"bind": pg_engine}
        )
        session.execute(
            sa.insert(invoices).values(order_id=1, amount=30), bind_arguments={"bind": my_engine}
        )
        done.write_text(gtx.gtrid or "")


def main() -> None:
    settings = json.loads(sys.argv[1])
    run = with_drivers if settings["mode"] == "drivers" else with_sqlalchemy
    run(settings, Path(settings["gtrid_file"]))
    print("committed", flush=True)


if __name__ == "__main__":
    main()
