"""The README's program, runnable: one order on PostgreSQL and its invoice on MariaDB.

    scripts/run-coordinator                       # terminal 1
    .venv/bin/python examples/shop.py             # terminal 2

Starts its own throwaway PostgreSQL and MariaDB (twostep.testing), then commits an
order and its invoice atomically through the coordinator at $TWOSTEP_COORDINATOR (default
127.0.0.1:50051), then shows that a failing block commits neither.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from twostep.client import (
    ActiveRecord,
    ConnectionManager,
    get_connection,
    global_transaction,
)
from twostep.testing import MariaDBServer, PostgresServer


class Order(ActiveRecord):
    __connection__ = "orders"


class Invoice(ActiveRecord):
    __connection__ = "billing"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="twostep-shop-") as tmp:
        pg, maria = PostgresServer(Path(tmp) / "pg"), MariaDBServer(Path(tmp) / "maria")
        pg.start()
        maria.start()
        try:
            pg.create_database("shop")
            maria.create_database("billing")
            ConnectionManager.configure("orders", pg.config("shop"))
            ConnectionManager.configure("billing", maria.config("billing"))
            get_connection("orders").execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT)")
            get_connection("billing").execute(
                "CREATE TABLE invoices (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT,"
                " amount INT)"
            )
            shop()
        finally:
            ConnectionManager.close_all()
            pg.stop()
            maria.stop()


def shop() -> None:
    with global_transaction(timeout=30) as gtx:
        Order(id=1, total=30).save()
        Invoice(order_id=1, amount=30).save()
    print(f"committed {gtx.gtrid}: {Order.count()} order, {Invoice.count()} invoice")

    try:
        with global_transaction(timeout=30):
            Order(id=2, total=50).save()
            Invoice(order_id=2, amount=50).save()
            raise RuntimeError("payment declined")
    except RuntimeError as exc:
        print(f"rolled back ({exc}): still {Order.count()} order, {Invoice.count()} invoice")


if __name__ == "__main__":
    main()
