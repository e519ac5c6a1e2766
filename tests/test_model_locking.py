"""Lost updates and how the model API prevents them: `for_update()`, set-based updates with
column expressions (`Query.update(n=F("n") + 1)`, `Query.delete()`), and optimistic locking
with a `lock_version` column, on real PostgreSQL, MariaDB and SQLite; then the 16-client
cross-database transfer of issue 12, run the lost-update way and the three safe ways.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from twostep.client import (
    ActiveRecord,
    Connection,
    ConnectionManager,
    F,
    LockNotAvailable,
    StaleObjectError,
    Transaction,
    TwostepError,
    get_connection,
    global_transaction,
)
from twostep.testing import DIALECTS, fresh_config

PG, MY, LITE = DIALECTS

DDL = {
    PG: [
        "CREATE TABLE accounts (id INT PRIMARY KEY, owner TEXT UNIQUE,"
        " balance NUMERIC(12,2) NOT NULL, lock_version INT)",
        "CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL)",
    ],
    MY: [
        "CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50) UNIQUE,"
        " balance DECIMAL(12,2) NOT NULL, lock_version INT) ENGINE=InnoDB",
        "CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB",
    ],
    LITE: [
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT UNIQUE,"
        " balance DECIMAL(12,2) NOT NULL, lock_version INT)",
        "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INT NOT NULL)",
    ],
}


class Account(ActiveRecord):  # has lock_version: optimistic locking is on
    __connection__ = "main"


class UnlockedAccount(ActiveRecord):  # the same table with optimistic locking turned off
    __connection__ = "main"
    __tablename__ = "accounts"
    __lock_column__ = None


class Counter(ActiveRecord):
    __connection__ = "main"

    destroyed: list[int] = []  # noqa: RUF012 - shared on purpose, reset by tests

    def after_destroy(self) -> None:
        Counter.destroyed.append(self.id)


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    connection = ConnectionManager.configure(
        "main", fresh_config(request, request.param, tmp_path / "main.db")
    )
    for statement in DDL[request.param]:
        connection.execute(statement)
    request.addfinalizer(ConnectionManager.close_all)
    return connection


def in_thread(work: Callable[[], Any]) -> Any:
    """Run `work` in a new thread (its own context: no transaction of ours) and return its
    result or raise its exception."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# -- set-based updates and deletes -------------------------------------------------------------


def test_update_with_a_column_expression_is_computed_by_the_database(db: Connection) -> None:
    Counter.create(id=1, n=10)
    Counter.create(id=2, n=20)
    assert Counter.where(id=1).update(n=F("n") + 5) == 1
    assert Counter.query().update(n=F("n") * 2 - 1) == 2
    assert [c.n for c in Counter.order_by("id")] == [29, 39]
    assert Counter.where(id=2).update(n=100 - F("n")) == 1  # a number on the left, too
    assert Counter.where(id=2).first().n == 61


def test_update_returns_the_rows_matched_even_when_no_value_changes(db: Connection) -> None:
    # MariaDB reports changed rows unless the session asks for matched ones (FOUND_ROWS).
    Counter.create(id=1, n=1)
    assert Counter.where(id=1).update(n=1) == 1
    assert Counter.where(id=1).update(n=F("n")) == 1
    assert Counter.where(id=99).update(n=1) == 0


def test_a_guarded_update_changes_nothing_when_the_guard_fails(db: Connection) -> None:
    Account.create(id=1, balance=Decimal("3.00"))
    debit = Account.where(id=1).where("balance >= ?", 5)
    assert debit.update(balance=F("balance") - 5) == 0  # short: nothing happened
    Account.where(id=1).update(balance=F("balance") + Decimal("2.50"))
    assert debit.update(balance=F("balance") - 5) == 1
    assert Account.where(id=1).first().balance == Decimal("0.50")


def test_delete_removes_every_matching_row_and_runs_no_hooks(db: Connection) -> None:
    for i in range(1, 5):
        Counter.create(id=i, n=i)
    Counter.destroyed = []
    assert Counter.where("n > ?", 2).delete() == 2
    assert Counter.where(id=[1, 99]).delete() == 1
    assert [c.id for c in Counter.all()] == [2]
    assert Counter.destroyed == []
    assert Counter.query().delete() == 1
    assert Counter.count() == 0


def test_set_based_writes_refuse_what_would_be_ignored(db: Connection) -> None:
    Counter.create(id=1, n=1)
    for query in (
        Counter.order_by("n"),
        Counter.limit(1),
        Counter.select("n"),
        Counter.where(id=1).for_update(),
    ):
        with pytest.raises(ValueError, match="drop order_by"):
            query.update(n=2)
        with pytest.raises(ValueError, match="drop order_by"):
            query.delete()
    with pytest.raises(ValueError, match="at least one"):
        Counter.where(id=1).update()
    with pytest.raises(TypeError, match="do not divide"):
        Counter.where(id=1).update(n=F("n") / 2)
    with pytest.raises(AttributeError, match="no column 'm'"):
        Counter.where(id=1).update(n=F("m") + 1)
    assert Counter.first().n == 1


def test_a_column_expression_assigned_to_an_instance_is_refused_with_the_way_to_do_it(
    db: Connection,
) -> None:
    counter = Counter.create(id=1, n=1)
    counter.n = F("n") + 1
    with pytest.raises(TwostepError, match=r"Counter\.n: .*where\(\.\.\.\)\.update\(n="):
        counter.save()


# -- optimistic locking ------------------------------------------------------------------------


def test_lock_version_starts_at_zero_and_every_save_increments_it(db: Connection) -> None:
    account = Account.create(id=1, balance=10)
    assert account.lock_version == 0
    account.balance = 11
    account.save()
    assert account.lock_version == 1
    account.save()  # nothing assigned: nothing sent, the version stays
    assert Account.where(id=1).first().lock_version == 1


def test_a_stale_save_raises_and_writes_nothing(db: Connection) -> None:
    Account.create(id=1, balance=10)
    mine, theirs = Account.where(id=1).first(), Account.where(id=1).first()
    theirs.balance = 20
    theirs.save()
    mine.balance = 5
    with pytest.raises(StaleObjectError, match=r"Account \(id=1\).*lock_version 0") as info:
        mine.save()
    assert (info.value.model, info.value.key) == ("Account", (1,))
    assert Account.where(id=1).first().balance == Decimal("20.00")
    fresh = Account.where(id=1).first()  # reloaded: the change applies
    fresh.balance = fresh.balance - 5
    fresh.save()
    assert Account.where(id=1).first().to_dict()["balance"] == Decimal("15.00")


def test_a_stale_delete_raises_and_so_does_saving_a_row_deleted_meanwhile(db: Connection) -> None:
    Account.create(id=1, balance=10)
    mine, theirs = Account.where(id=1).first(), Account.where(id=1).first()
    theirs.balance = 20
    theirs.save()
    with pytest.raises(StaleObjectError):
        mine.delete()
    assert Account.count() == 1
    theirs.delete()
    assert Account.count() == 0
    gone = Account.create(id=2, balance=1)
    Account.where(id=2).delete()
    gone.balance = 2
    with pytest.raises(StaleObjectError):
        gone.save()


def test_set_based_updates_and_upserts_make_loaded_instances_stale(db: Connection) -> None:
    Account.create(id=1, owner="ann", balance=10)
    loaded = Account.where(id=1).first()
    Account.where(id=1).update(balance=F("balance") + 1)
    loaded.balance = 0
    with pytest.raises(StaleObjectError):
        loaded.save()
    loaded = Account.where(id=1).first()
    assert loaded.lock_version == 1
    upserted = Account.insert_or_update(id=1, owner="ann", balance=50)
    assert Account.where(id=1).first().lock_version == 2
    if db.dialect.supports_returning:
        assert upserted.lock_version == 2
    loaded.balance = 0
    with pytest.raises(StaleObjectError):
        loaded.save()
    Account.bulk_insert_or_update(
        [{"id": 1, "owner": "ann", "balance": 60}, {"id": 2, "owner": "bob", "balance": 1}]
    )
    assert [(a.id, a.lock_version) for a in Account.order_by("id")] == [(1, 3), (2, 0)]


def test_an_assigned_lock_version_is_the_one_the_save_expects(db: Connection) -> None:
    # A web form carries the version it showed; the save must fail if the row moved on.
    Account.create(id=1, balance=10)
    Account.where(id=1).update(balance=11)  # someone else: version 1
    form = {"balance": Decimal("12.00"), "lock_version": 0}
    account = Account.where(id=1).first()
    account.balance, account.lock_version = form["balance"], form["lock_version"]
    with pytest.raises(StaleObjectError):
        account.save()
    account.lock_version = 1
    account.save()
    assert account.lock_version == 2


def test_a_table_without_the_lock_column_or_with_it_turned_off_saves_unchecked(
    db: Connection,
) -> None:
    UnlockedAccount.create(id=1, balance=10)
    mine, theirs = UnlockedAccount.where(id=1).first(), UnlockedAccount.where(id=1).first()
    theirs.balance = 20
    theirs.save()
    mine.balance = 5
    mine.save()  # the lost update optimistic locking exists to prevent
    assert UnlockedAccount.where(id=1).first().balance == Decimal("5.00")
    assert UnlockedAccount.where(id=1).first().lock_version is None


def test_a_row_loaded_without_its_lock_version_cannot_be_saved(db: Connection) -> None:
    Account.create(id=1, balance=10)
    partial = Account.select("id", "balance").first()
    partial.balance = 1
    with pytest.raises(ValueError, match=r"lock_version .*reload"):
        partial.save()


# -- for_update --------------------------------------------------------------------------------


def test_for_update_outside_a_transaction_is_refused(db: Connection) -> None:
    Counter.create(id=1, n=1)
    with pytest.raises(TwostepError, match="outside a transaction would lock nothing"):
        Counter.where(id=1).for_update().first()
    with pytest.raises(ValueError, match="nowait=True or skip_locked=True"):
        Counter.for_update(nowait=True, skip_locked=True)
    with pytest.raises(ValueError, match="count"):
        Counter.for_update().count()


@pytest.mark.parametrize("db", [PG, MY], indirect=True)
def test_for_update_holds_the_rows_until_the_transaction_ends(db: Connection) -> None:
    for i in (1, 2, 3):
        Counter.create(id=i, n=i)
    with Transaction(db):
        assert [c.id for c in Counter.where(id=[1, 2]).for_update()] == [1, 2]

        def other_transaction(query: Any) -> list[int]:
            with Transaction(get_connection("main"), timeout=5):
                return [c.id for c in query.order_by("id").all()]

        with pytest.raises(LockNotAvailable) as info:
            in_thread(lambda: other_transaction(Counter.where(id=1).for_update(nowait=True)))
        assert info.value.code in {"55P03", "1205"}
        assert in_thread(lambda: other_transaction(Counter.for_update(skip_locked=True))) == [3]
        assert in_thread(lambda: other_transaction(Counter.query())) == [1, 2, 3]  # reads pass
    # Released at commit.
    assert in_thread(lambda: other_transaction(Counter.for_update(nowait=True))) == [1, 2, 3]


@pytest.mark.parametrize("db", [LITE], indirect=True)
def test_for_update_on_sqlite_says_why_not_and_what_to_use(db: Connection) -> None:
    Counter.create(id=1, n=1)
    with Transaction(db):
        with pytest.raises(TwostepError, match=r"SQLite has no row locks.*database is locked"):
            Counter.where(id=1).for_update().first()


# -- 16 concurrent cross-database transfers (issue 12) -----------------------------------------

CLIENTS = 16
AMOUNT = 5
START = 1000


class Source(ActiveRecord):  # PostgreSQL: the debited account
    __connection__ = "bank_pg"
    __tablename__ = "accounts"
    __lock_column__ = None


class Target(ActiveRecord):  # MariaDB: the credited account
    __connection__ = "bank_my"
    __tablename__ = "accounts"
    __lock_column__ = None


class VersionedSource(Source):  # the same tables, with optimistic locking on
    __tablename__ = "accounts"
    __lock_column__ = "lock_version"


class VersionedTarget(Target):
    __tablename__ = "accounts"
    __lock_column__ = "lock_version"


class Debit(ActiveRecord):  # one row per transfer, on each side
    __connection__ = "bank_pg"
    __tablename__ = "transfers"


class Credit(ActiveRecord):
    __connection__ = "bank_my"
    __tablename__ = "transfers"


@pytest.fixture
def bank(pg_config: dict[str, Any], maria_config: dict[str, Any]) -> Any:
    """Account 1 holding START on PostgreSQL ('bank_pg') and on MariaDB ('bank_my')."""
    for name, config, engine in (
        ("bank_pg", pg_config, ""),
        ("bank_my", maria_config, " ENGINE=InnoDB"),
    ):
        connection = ConnectionManager.configure(name, config)
        connection.execute(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL,"
            f" lock_version INT NOT NULL DEFAULT 0){engine}"
        )
        connection.execute(f"CREATE TABLE transfers (id INT PRIMARY KEY){engine}")
        connection.execute("INSERT INTO accounts (id, balance) VALUES (1, ?)", (START,))
    yield
    ConnectionManager.close_all()


def run_clients(transfer: Callable[[int, threading.Barrier], None]) -> list[int]:
    """CLIENTS threads, each calling `transfer(id, barrier)` once; returns the ids of the
    transfers whose client was told they committed (the call returned), and raises the first
    error any client got."""
    barrier = threading.Barrier(CLIENTS, timeout=60)
    committed: list[int] = []
    errors: list[BaseException] = []

    def client(transfer_id: int) -> None:
        try:
            transfer(transfer_id, barrier)
            committed.append(transfer_id)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(1, CLIENTS + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sorted(committed)


def balances() -> tuple[int, int]:
    return Source.where(id=1).first().balance, Target.where(id=1).first().balance


def assert_every_told_commit_is_present_and_money_is_conserved(committed: list[int]) -> None:
    assert committed == list(range(1, CLIENTS + 1))
    assert [d.id for d in Debit.order_by("id")] == committed
    assert [c.id for c in Credit.order_by("id")] == committed
    moved = AMOUNT * len(committed)
    assert balances() == (START - moved, START + moved)


def log_transfer(transfer_id: int) -> None:
    Debit.create(id=transfer_id)
    Credit.create(id=transfer_id)


def test_sixteen_clients_reading_then_saving_lose_updates(bank: Any, coordinator: Any) -> None:
    """The hazard is real: every client is told its transfer committed, both transfer logs
    agree, and yet the balances moved by one transfer, not sixteen."""

    def transfer(transfer_id: int, barrier: threading.Barrier) -> None:
        with global_transaction(coordinator=coordinator.address, timeout=60):
            source, target = Source.where(id=1).first(), Target.where(id=1).first()
            barrier.wait()  # every client has read before any writes: the race, made certain
            source.balance -= AMOUNT
            source.save()
            target.balance += AMOUNT
            target.save()
            log_transfer(transfer_id)

    committed = run_clients(transfer)
    assert committed == list(range(1, CLIENTS + 1))
    assert [d.id for d in Debit.order_by("id")] == committed
    assert balances() == (START - AMOUNT, START + AMOUNT)  # 15 transfers' money vanished


def test_sixteen_clients_with_for_update_lose_nothing(bank: Any, coordinator: Any) -> None:
    def transfer(transfer_id: int, barrier: threading.Barrier) -> None:
        barrier.wait()  # all start together
        with global_transaction(coordinator=coordinator.address, timeout=60):
            source = Source.where(id=1).for_update().first()
            target = Target.where(id=1).for_update().first()
            source.balance -= AMOUNT
            source.save()
            target.balance += AMOUNT
            target.save()
            log_transfer(transfer_id)

    assert_every_told_commit_is_present_and_money_is_conserved(run_clients(transfer))


def test_sixteen_clients_with_atomic_updates_lose_nothing(bank: Any, coordinator: Any) -> None:
    def transfer(transfer_id: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        with global_transaction(coordinator=coordinator.address, timeout=60):
            debited = Source.where(id=1).where("balance >= ?", AMOUNT)
            assert debited.update(balance=F("balance") - AMOUNT) == 1
            Target.where(id=1).update(balance=F("balance") + AMOUNT)
            log_transfer(transfer_id)

    assert_every_told_commit_is_present_and_money_is_conserved(run_clients(transfer))


def test_sixteen_clients_with_lock_version_retry_stale_transfers_and_lose_nothing(
    bank: Any, coordinator: Any
) -> None:
    stale: list[int] = []

    def transfer(transfer_id: int, barrier: threading.Barrier) -> None:
        for attempt in range(CLIENTS * 2):
            try:
                with global_transaction(coordinator=coordinator.address, timeout=60):
                    source = VersionedSource.where(id=1).first()
                    target = VersionedTarget.where(id=1).first()
                    if attempt == 0:
                        barrier.wait()  # the same race as the lost-update run
                    source.balance -= AMOUNT
                    source.save()
                    target.balance += AMOUNT
                    target.save()
                    log_transfer(transfer_id)
                return
            except StaleObjectError:
                stale.append(transfer_id)  # rolled back on both databases: read again
        raise AssertionError(f"transfer {transfer_id} stayed stale")

    assert_every_told_commit_is_present_and_money_is_conserved(run_clients(transfer))
    assert len(stale) >= CLIENTS - 1  # every client but the first read a version that moved on
    assert VersionedSource.where(id=1).first().lock_version == CLIENTS
