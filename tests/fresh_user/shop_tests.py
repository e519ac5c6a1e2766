"""An application's own tests, as a fresh user writes them: copied outside the repo as
test_shop.py and run by tests/test_testing_kit.py in a new virtualenv where twostep was
installed with pip. Only the twostep pytest plugin's fixtures and `twostep.testing` are used.
"""

import importlib.metadata
import sys
from pathlib import Path

import pytest

from twostep.client import ActiveRecord, ConnectionManager, get_connection, global_transaction
from twostep.testing import crash_at


class Order(ActiveRecord):
    __connection__ = "orders"


class Invoice(ActiveRecord):
    __connection__ = "billing"


def connect(configs):
    for name, config in configs.items():
        ConnectionManager.configure(name, config)


@pytest.fixture
def shop(pg_config, maria_config):
    configs = {"orders": pg_config, "billing": maria_config}
    connect(configs)
    get_connection("orders").execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT)")
    get_connection("billing").execute(
        "CREATE TABLE invoices (order_id INT PRIMARY KEY, amount INT) ENGINE=InnoDB"
    )
    yield configs
    ConnectionManager.close_all()


def place_order(coordinator, order_id, configs=None, timeout=30):
    if configs:  # in a child process (crash_at): a new interpreter, nothing configured yet
        connect(configs)
    with global_transaction(coordinator=coordinator, timeout=timeout):
        Order(id=order_id, total=30).save()
        Invoice(order_id=order_id, amount=30).save()


def stored():
    return [o.id for o in Order.all()], [i.order_id for i in Invoice.all()]


def test_an_order_and_its_invoice_commit_together(shop, coordinator):
    place_order(coordinator.address, 1)
    assert stored() == ([1], [1])


def test_a_failing_block_commits_neither(shop, coordinator):
    with pytest.raises(RuntimeError):
        with global_transaction(coordinator=coordinator.address, timeout=30):
            Order(id=2, total=30).save()
            Invoice(order_id=2, amount=30).save()
            raise RuntimeError("out of stock")
    assert stored() == ([], [])


def test_a_client_killed_after_the_decision_is_committed_by_recovery(shop, coordinator_factory):
    settings = {"recovery_grace_s": 0, "recovery_interval_s": 3600}
    coordinator = coordinator_factory(resources=shop, settings=settings)
    crash_at("client.after_decision", place_order, args=(coordinator.address, 3, shop))
    assert stored() == ([], [])  # both branches prepared, neither committed
    coordinator.settle()
    assert stored() == ([3], [3])


def test_a_client_killed_before_commit_is_rolled_back_by_recovery(shop, coordinator_factory):
    coordinator = coordinator_factory(resources=shop)
    args = (coordinator.address, 4, shop, 2)  # a 2 s deadline: recovery aborts past it
    crash_at("client.before_commit_request", place_order, args=args)
    coordinator.settle()  # aborts both branches once past the deadline
    assert stored() == ([], [])
    place_order(coordinator.address, 4, timeout=5)  # no lock of the dead client is left
    assert stored() == ([4], [4])


def test_twostep_comes_from_this_environment():
    import twostep.testing

    assert Path(twostep.testing.__file__).is_relative_to(sys.prefix)
    [plugin] = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "twostep"]
    assert plugin.value == "twostep.testing.plugin"
    assert Path(plugin.dist.locate_file("")).is_relative_to(sys.prefix)
