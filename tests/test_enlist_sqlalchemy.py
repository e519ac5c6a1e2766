"""`twostep.client.sqlalchemy.enlist_engine`: SQLAlchemy Sessions and Connections on
PostgreSQL (psycopg) and MariaDB (PyMySQL) in `global_transaction()`, against the real servers
and a real coordinator. Every test ends with nothing of twostep's left prepared.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from test_global_transaction import assert_nothing_prepared

from twostep.client import (
    ActiveRecord,
    ConfigurationError,
    ConnectionManager,
    StatementRefused,
    TransactionAborted,
    TwoPhaseNotSupported,
    global_transaction,
)
from twostep.client.sqlalchemy import enlist_engine


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    total: Mapped[int]


class Invoice(Base):
    __tablename__ = "invoices"
    order_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[int]


class Shipment(ActiveRecord):  # a twostep model, on MariaDB, beside the ORM's
    __connection__ = "shipping"


def engine_for(driver: str, config: dict) -> sa.Engine:
    url = sa.URL.create(
        driver,
        username=config["username"],
        password=config.get("password") or None,
        host=config["host"],
        port=config["port"],
        database=config["database"],
    )
    return sa.create_engine(url, pool_size=2)


@pytest.fixture
def engines(pg, maria, pg_config, maria_config):
    """(PostgreSQL engine as 'orders', MariaDB engine as 'billing'), tables created."""
    pg_engine = engine_for("postgresql+psycopg", pg_config)
    my_engine = engine_for("mysql+pymysql", maria_config)
    Order.__table__.create(pg_engine)
    Invoice.__table__.create(my_engine)
    enlist_engine(pg_engine, resource="orders")
    enlist_engine(my_engine, resource="billing")
    yield pg_engine, my_engine
    pg_engine.dispose()
    my_engine.dispose()
    assert_nothing_prepared(pg, maria, pg_config["database"])


@pytest.fixture
def session(engines):
    pg_engine, my_engine = engines
    with Session(binds={Order: pg_engine, Invoice: my_engine}) as session:
        yield session


def seen(engines) -> tuple[list, list]:
    """What another connection sees on each database (on another thread: outside the block)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_seen, *engines).result()


def _seen(pg_engine: sa.Engine, my_engine: sa.Engine) -> tuple[list, list]:
    with pg_engine.connect() as conn:
        orders = [tuple(r) for r in conn.execute(sa.text("SELECT id, total FROM orders"))]
    with my_engine.connect() as conn:
        invoices = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM invoices"))]
    return sorted(orders), sorted(invoices)


def test_session_add_inside_the_block_commits_both_databases_atomically(
    engines, session, coordinator
):
    with global_transaction(coordinator=coordinator.address, timeout=10) as gtx:
        session.add(Order(id=1, total=30))
        session.add(Invoice(order_id=1, amount=30))
    assert seen(engines) == ([(1, 30)], [(1, 30)])
    view = coordinator.get(gtx.gtrid)
    assert (view.state_name, sorted(view.resources)) == ("COMMITTED", ["billing", "orders"])
    assert not session.in_transaction()  # its transaction ended with the block
    assert session.get(Order, 1).total == 30  # and it works as before


def test_an_exception_in_the_block_rolls_back_both_and_the_session(engines, session, coordinator):
    with pytest.raises(RuntimeError, match="declined"):
        with global_transaction(coordinator=coordinator.address):
            session.add(Order(id=1, total=30))
            session.add(Invoice(order_id=1, amount=30))
            session.flush()
            raise RuntimeError("declined")
    assert seen(engines) == ([], [])
    assert not session.in_transaction() and not session.new


def test_a_core_connection_and_a_twostep_model_commit_together(engines, maria_config, coordinator):
    pg_engine, _ = engines
    ConnectionManager.configure("shipping", maria_config)
    try:
        from twostep.client import get_connection

        get_connection("shipping").execute(
            "CREATE TABLE shipments (id INT PRIMARY KEY, order_id INT) ENGINE=InnoDB"
        )
        with pg_engine.connect() as conn:
            with global_transaction(coordinator=coordinator.address) as gtx:
                conn.execute(sa.insert(Order.__table__).values(id=7, total=70))
                Shipment.create(id=1, order_id=7)
            assert not conn.in_transaction()
        assert seen(engines)[0] == [(7, 70)]
        assert Shipment.count() == 1
        assert coordinator.get(gtx.gtrid).state_name == "COMMITTED"
    finally:
        ConnectionManager.close_all()


def test_session_commit_inside_the_block_is_refused_and_changes_nothing(
    engines, session, coordinator
):
    with global_transaction(coordinator=coordinator.address, timeout=10):
        session.add(Order(id=1, total=30))
        session.add(Invoice(order_id=1, amount=30))
        session.flush()
        with pytest.raises(StatementRefused, match=r"session\.commit"):
            session.commit()
        assert seen(engines) == ([], [])  # nothing committed on its own
        session.add(Order(id=2, total=40))
    assert seen(engines) == ([(1, 30), (2, 40)], [(1, 30)])


def test_connection_commit_inside_the_block_is_refused(engines, coordinator):
    _, my_engine = engines
    with my_engine.connect() as conn:
        with global_transaction(coordinator=coordinator.address, timeout=10):
            conn.execute(sa.insert(Invoice.__table__).values(order_id=1, amount=1))
            with pytest.raises(StatementRefused, match="COMMIT"):
                conn.exec_driver_sql("COMMIT")
            conn.execute(sa.insert(Invoice.__table__).values(order_id=2, amount=2))
            with pytest.raises(StatementRefused, match="commit"):
                conn.commit()  # SQLAlchemy deactivates the transaction of a failed commit
            assert seen(engines) == ([], [])
    assert seen(engines) == ([], [(1, 1), (2, 2)])  # the block decided


def test_a_rollback_after_writing_inside_the_block_rolls_back_everything(
    engines, session, coordinator
):
    with pytest.raises(TransactionAborted, match=r"(orders|billing) was rolled back inside"):
        with global_transaction(coordinator=coordinator.address, timeout=10):
            session.add(Invoice(order_id=1, amount=30))
            session.add(Order(id=1, total=30))
            session.flush()
            session.rollback()
    assert seen(engines) == ([], [])


def test_a_session_that_only_read_may_close_inside_the_block(engines, session, coordinator):
    pg_engine, _ = engines
    with global_transaction(coordinator=coordinator.address, timeout=10):
        with Session(pg_engine) as reader:
            assert reader.get(Order, 1) is None
        session.add(Order(id=1, total=30))  # the resource is free again
        session.add(Invoice(order_id=1, amount=30))
    assert seen(engines) == ([(1, 30)], [(1, 30)])


def test_a_failed_flush_rolls_back_the_whole_transaction(engines, session, coordinator):
    with pytest.raises(TransactionAborted):
        with global_transaction(coordinator=coordinator.address, timeout=10):
            session.add(Invoice(order_id=1, amount=30))
            session.flush()
            session.add(Order(id=1, total=30))
            session.add(Order(id=1, total=31))  # a duplicate key: the flush fails
            with pytest.raises(sa.exc.SQLAlchemyError):
                session.flush()
    assert seen(engines) == ([], [])


def test_the_pooled_driver_connections_are_given_back_as_found(engines, session, coordinator):
    pg_engine, my_engine = engines
    with my_engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT @@session.innodb_lock_wait_timeout").scalar()
    with global_transaction(coordinator=coordinator.address, timeout=5):
        session.add(Order(id=1, total=30))
        session.add(Invoice(order_id=1, amount=30))
        session.flush()
        inside = session.connection(bind_arguments={"mapper": Invoice}).exec_driver_sql(
            "SELECT @@session.innodb_lock_wait_timeout"
        )
        assert 0 < inside.scalar() <= 5
    with my_engine.connect() as conn:  # the same pooled connection (pool of one in use)
        assert conn.exec_driver_sql("SELECT @@session.innodb_lock_wait_timeout").scalar() == (
            before
        )
        assert conn.connection.dbapi_connection.get_autocommit() is False
    with pg_engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False


def test_an_engine_that_is_not_enlisted_is_refused_inside_the_block(
    engines, pg_config2, coordinator
):
    other = engine_for("postgresql+psycopg", pg_config2)
    try:
        with pytest.raises(TwoPhaseNotSupported, match="not enlisted"):
            with global_transaction(coordinator=coordinator.address):
                with Session(other) as s:
                    s.execute(sa.text("SELECT 1"))
    finally:
        other.dispose()


def test_enlist_engine_refuses_sqlite_a_second_resource_and_non_engines(tmp_path):
    lite = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(TwoPhaseNotSupported, match="sqlite"):
        enlist_engine(lite, resource="notes")
    engine = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/x")  # never connects
    enlist_engine(engine, resource="orders")
    enlist_engine(engine, resource="orders")  # again: nothing changes
    with pytest.raises(ConfigurationError, match="enlisted as 'orders' already"):
        enlist_engine(engine, resource="other")
    with pytest.raises(TypeError, match="Engine"):
        enlist_engine(engine.connect, resource="orders")
