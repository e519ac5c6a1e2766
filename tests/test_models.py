"""ActiveRecord on real PostgreSQL, MariaDB and SQLite.

Tests whose behaviour is the same on the three databases take the `db` fixture, which runs
them once per database on a fresh database with the tables below.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import twostep.client._model.query as query_module
from twostep.client import (
    ActiveRecord,
    ConfigurationError,
    Connection,
    ConnectionManager,
    DatabaseError,
    get_connection,
)
from twostep.client._connections import activate
from twostep.client._transaction import Transaction
from twostep.testing import DIALECTS, fresh_config

DDL = {
    "postgresql": [
        "CREATE TABLE gadgets (id SERIAL PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE,"
        " price INT, note TEXT)",
        "CREATE TABLE order_items (order_id INT, line INT, qty INT, PRIMARY KEY (order_id, line))",
        "CREATE TABLE logs (message TEXT)",
    ],
    "mysql": [
        "CREATE TABLE gadgets (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL"
        " UNIQUE, price INT, note TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        "CREATE TABLE order_items (order_id INT, line INT, qty INT, PRIMARY KEY (order_id, line))"
        " ENGINE=InnoDB",
        "CREATE TABLE logs (message TEXT) ENGINE=InnoDB",
    ],
    "sqlite": [
        "CREATE TABLE gadgets (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE,"
        " price INT, note TEXT)",
        "CREATE TABLE order_items (order_id INT, line INT, qty INT, PRIMARY KEY (order_id, line))",
        "CREATE TABLE logs (message TEXT)",
    ],
}


class Gadget(ActiveRecord):
    __connection__ = "main"


class OrderItem(ActiveRecord):  # table order_items: composite primary key
    __connection__ = "main"


class Log(ActiveRecord):  # table logs: no primary key
    __connection__ = "main"


class HookedGadget(ActiveRecord):
    __connection__ = "main"
    __tablename__ = "gadgets"

    events: list[tuple[str, Any]] = []  # noqa: RUF012 - shared on purpose, reset by tests

    def after_save(self) -> None:
        # The row is written when the hook runs: the hook can read it back.
        HookedGadget.events.append(("saved", Gadget.where(id=self.id).first().price))

    def after_destroy(self) -> None:
        HookedGadget.events.append(("destroyed", Gadget.where(id=self.id).count()))


def _configure(
    request: pytest.FixtureRequest, name: str, dialect: str, tmp_path: Any
) -> Connection:
    config = fresh_config(request, dialect, tmp_path / f"{name}.db")
    connection = ConnectionManager.configure(name, config)
    for statement in DDL[dialect]:
        connection.execute(statement)
    return connection


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """The connection 'main' on a fresh database of each dialect, with the tables of DDL."""
    connection = _configure(request, "main", request.param, tmp_path)
    request.addfinalizer(ConnectionManager.close_all)
    return connection


@pytest.fixture
def archive(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """A second connection, 'archive', on SQLite, with the same tables."""
    connection = _configure(request, "archive", "sqlite", tmp_path)
    request.addfinalizer(ConnectionManager.close_all)
    return connection


def seed(n: int = 5) -> list[Gadget]:
    return [Gadget.create(name=f"g{i}", price=i * 10) for i in range(1, n + 1)]


# -- CRUD --------------------------------------------------------------------------------------


def test_create_read_update_delete_round_trip(db: Connection) -> None:
    gadget = Gadget(name="lamp", price=30)
    assert gadget.save() is gadget
    loaded = Gadget.where(id=gadget.id).first()
    assert loaded.to_dict() == {"id": gadget.id, "name": "lamp", "price": 30, "note": None}
    loaded.price = 35
    loaded.note = "on sale"
    loaded.save()
    assert Gadget.where(id=gadget.id).first().to_dict()["price"] == 35
    loaded.delete()
    assert Gadget.where(id=gadget.id).first() is None
    assert Gadget.count() == 0


def test_generated_primary_key_is_read_back_after_insert(db: Connection) -> None:
    first, second = Gadget.create(name="a"), Gadget(name="b").save()
    assert isinstance(first.id, int) and isinstance(second.id, int)
    assert first.id != second.id
    in_db = dict(db.execute("SELECT name, id FROM gadgets"))
    assert in_db == {"a": first.id, "b": second.id}


def test_explicit_primary_key_is_kept_and_a_none_key_is_generated(db: Connection) -> None:
    assert Gadget.create(id=42, name="fixed").id == 42
    assert Gadget.create(id=None, name="generated").id not in (None, 42)
    item = OrderItem.create(order_id=1, line=2, qty=3)  # composite key, given
    assert (item.order_id, item.line) == (1, 2)


def test_save_updates_only_the_assigned_columns(db: Connection) -> None:
    Gadget.create(name="shared", price=1, note="old")
    one, two = Gadget.where(name="shared").first(), Gadget.where(name="shared").first()
    one.price = 2
    two.note = "new"
    one.save()
    two.save()  # does not write back the price it loaded
    assert Gadget.where(name="shared").first().to_dict()["price"] == 2
    assert Gadget.where(name="shared").first().note == "new"


def test_changing_the_primary_key_updates_the_row_it_was_loaded_as(db: Connection) -> None:
    gadget = Gadget.create(id=1, name="mover")
    gadget.id = 7
    gadget.save()
    assert [g.id for g in Gadget.all()] == [7]


def test_rows_with_a_composite_key_update_and_delete_by_the_whole_key(db: Connection) -> None:
    for line in (1, 2):
        OrderItem.create(order_id=1, line=line, qty=1)
    item = OrderItem.where(order_id=1, line=2).first()
    item.qty = 9
    item.save()
    assert [(i.line, i.qty) for i in OrderItem.order_by("line")] == [(1, 1), (2, 9)]
    item.delete()
    assert [i.line for i in OrderItem.all()] == [1]


def test_a_table_without_primary_key_inserts_but_refuses_update_and_delete(db: Connection) -> None:
    log = Log.create(message="hello")
    assert Log.where(message="hello").count() == 1
    log.message = "changed"
    with pytest.raises(ConfigurationError, match="primary key"):
        log.save()
    with pytest.raises(ConfigurationError, match="primary key"):
        Log.first().delete()


def test_a_row_loaded_without_its_primary_key_cannot_be_saved(db: Connection) -> None:
    Gadget.create(name="partial", price=1)
    gadget = Gadget.select("name", "price").first()
    assert gadget.id is None  # not selected: reads as None
    gadget.price = 2
    with pytest.raises(ValueError, match="loaded without"):
        gadget.save()


def test_deleting_an_unsaved_instance_is_refused(db: Connection) -> None:
    with pytest.raises(ValueError, match="never saved"):
        Gadget(name="x").delete()


def test_after_save_and_after_destroy_hooks_fire_after_the_statement(db: Connection) -> None:
    HookedGadget.events = []
    gadget = HookedGadget.create(name="hooked", price=1)
    gadget.price = 2
    gadget.save()
    gadget.delete()
    assert HookedGadget.events == [("saved", 1), ("saved", 2), ("destroyed", 0)]


# -- unknown names -----------------------------------------------------------------------------


def test_unknown_field_name_is_a_clear_error_everywhere(db: Connection) -> None:
    with pytest.raises(AttributeError, match=r"Gadget has no column 'prise'.*price"):
        Gadget(name="x", prise=3)
    gadget = Gadget.create(name="x")
    with pytest.raises(AttributeError, match="no column 'prise'"):
        gadget.prise = 3
    with pytest.raises(AttributeError, match="no column 'prise'"):
        _ = gadget.prise
    for query in (
        Gadget.where(prise=3),
        Gadget.order_by("-prise"),
        Gadget.select("prise"),
    ):
        with pytest.raises(AttributeError, match="no column 'prise'"):
            query.all()
    with pytest.raises(AttributeError, match="no column 'prise'"):
        Gadget.insert_or_update(name="x", prise=3, conflict_keys=["name"])


def test_a_model_whose_table_is_missing_or_connection_unset_is_a_configuration_error(
    db: Connection,
) -> None:
    class Missing(ActiveRecord):
        __connection__ = "main"

    class Unbound(ActiveRecord):
        pass

    with pytest.raises(ConfigurationError, match="'missings' does not exist on connection 'main'"):
        Missing.count()
    with pytest.raises(ConfigurationError, match="Unbound has no connection"):
        Unbound.count()


# -- queries -----------------------------------------------------------------------------------


def test_where_with_equality_null_lists_and_sql_fragments(db: Connection) -> None:
    seed()
    Gadget.create(name="odd", price=None, note="n")

    def names(query: Any) -> list[str]:
        return sorted(g.name for g in query.all())

    assert names(Gadget.where(price=20)) == ["g2"]
    assert names(Gadget.where(price=None)) == ["odd"]
    assert names(Gadget.where(price=[10, 30, 99])) == ["g1", "g3"]
    assert names(Gadget.where(price=[])) == []
    assert names(Gadget.where("price > ? AND price < ?", 15, 45)) == ["g2", "g3", "g4"]
    assert names(Gadget.where("price >= ?", 20).where(note=None).where(name="g5")) == ["g5"]
    assert names(Gadget.where("name LIKE 'g%' AND name <> ?", "g1")) == ["g2", "g3", "g4", "g5"]


def test_order_by_limit_select_and_first(db: Connection) -> None:
    seed()
    assert [g.price for g in Gadget.order_by("-price").limit(2)] == [50, 40]
    assert [g.name for g in Gadget.where("price > ?", 10).order_by("price").limit(1)] == ["g2"]
    picked = Gadget.select("name").order_by("name").all()
    assert [g.to_dict() for g in picked][:2] == [{"name": "g1"}, {"name": "g2"}]
    assert picked[0].price is None  # not selected
    assert Gadget.first().name == "g1"  # by primary key
    assert Gadget.order_by("-name").first().name == "g5"
    assert Gadget.where(name="nope").first() is None
    assert Gadget.limit(0).all() == []


def test_count_honours_conditions_and_limit(db: Connection) -> None:
    seed()
    assert Gadget.count() == 5
    assert Gadget.where("price > ?", 20).count() == 3
    assert Gadget.where("price > ?", 20).limit(2).count() == 2


def test_batch_yields_every_row_once_in_primary_key_order(db: Connection) -> None:
    gadgets = seed(7)
    chunks = list(Gadget.batch(3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [g.id for c in chunks for g in c] == sorted(g.id for g in gadgets)
    assert [len(c) for c in Gadget.where("price > ?", 10).batch(2)] == [2, 2, 2]
    assert [len(c) for c in Gadget.limit(5).batch(2)] == [2, 2, 1]
    assert [len(c) for c in Gadget.batch(7)] == [7]
    selected = [g.to_dict() for c in Gadget.select("name").batch(4) for g in c]
    assert selected[0] == {"name": "g1", "id": gadgets[0].id}  # the key is always loaded
    with pytest.raises(ValueError, match="primary key order"):
        next(Gadget.order_by("name").batch(2))


def test_batch_pages_through_a_composite_primary_key(db: Connection) -> None:
    for order_id in (1, 2):
        for line in (1, 2, 3):
            OrderItem.create(order_id=order_id, line=line, qty=order_id * line)
    keys = [(i.order_id, i.line) for c in OrderItem.batch(2) for i in c]
    assert keys == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]


def test_raw_query_returns_instances_with_extra_columns_readable(db: Connection) -> None:
    seed(3)
    rows = Gadget.raw_query(
        "SELECT id, name, price * 2 AS doubled FROM gadgets WHERE price > ? ORDER BY id", (10,)
    )
    assert [(g.name, g.doubled) for g in rows] == [("g2", 40), ("g3", 60)]
    rows[0].price = 1  # a loaded row can be saved back
    rows[0].save()
    assert Gadget.where(name="g2").first().price == 1


def test_queries_are_immutable_and_lazy(db: Connection) -> None:
    seed(3)
    base = Gadget.where("price > ?", 10)
    narrower = base.where(name="g3")
    ordered = base.order_by("-price")
    assert base.count() == 2
    assert narrower.count() == 1
    assert [g.name for g in ordered] == ["g3", "g2"]
    assert [g.name for g in base.order_by("name")] == ["g2", "g3"]
    # Building a query sends nothing: an unknown connection fails only when it runs.
    pending = Gadget.using("nowhere").where(id=1)
    with pytest.raises(ConfigurationError, match="'nowhere'"):
        pending.first()


# -- upserts -----------------------------------------------------------------------------------


def test_insert_or_update_inserts_then_updates_on_conflict(db: Connection) -> None:
    inserted = Gadget.insert_or_update(name="lamp", price=10, conflict_keys=["name"])
    updated = Gadget.insert_or_update(name="lamp", price=20, conflict_keys=["name"])
    assert inserted.id is not None and updated.id == inserted.id
    assert [(g.name, g.price) for g in Gadget.all()] == [("lamp", 20)]
    by_key = Gadget.insert_or_update(id=inserted.id, name="lamp", price=30)  # default: the key
    assert by_key.id == inserted.id
    assert Gadget.first().price == 30


def test_bulk_insert_or_update_writes_new_and_existing_rows(db: Connection) -> None:
    Gadget.create(name="a", price=1)
    Gadget.bulk_insert_or_update(
        [{"name": "a", "price": 10}, {"name": "b", "price": 20}, Gadget(name="c", price=30)],
        conflict_keys=["name"],
    )
    assert [(g.name, g.price) for g in Gadget.order_by("name")] == [
        ("a", 10),
        ("b", 20),
        ("c", 30),
    ]
    assert Gadget.bulk_insert_or_update([], conflict_keys=["name"]) == 0
    with pytest.raises(ValueError, match="same columns"):
        Gadget.bulk_insert_or_update([{"name": "x"}, {"name": "y", "price": 1}])


def test_bulk_insert_or_update_over_several_statements_is_all_or_nothing(
    db: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_module, "_BULK_ROWS", 2)
    rows = [{"name": f"n{i}", "price": i} for i in range(5)]
    assert Gadget.bulk_insert_or_update(rows, conflict_keys=["name"]) > 0
    assert Gadget.count() == 5
    rows = [{"name": f"m{i}", "price": i} for i in range(4)] + [{"name": None, "price": 0}]
    with pytest.raises(DatabaseError):  # the last statement violates NOT NULL
        Gadget.bulk_insert_or_update(rows, conflict_keys=["name"])
    assert Gadget.count() == 5  # the first two statements were rolled back with it


# -- values ------------------------------------------------------------------------------------

STRANGE = [
    "Robert'); DROP TABLE gadgets;--",
    "' OR 1=1 --",
    "\\'; DELETE FROM gadgets; #",
    "%s %(x)s %% ? :x $1",
    "Ωμέγα 日本語 עברית 😀 👩‍👩‍👧 e\u0301 \u202eevil\u202c \u200b",
]


def test_strange_values_and_injection_attempts_are_stored_verbatim(db: Connection) -> None:
    for i, value in enumerate(STRANGE):
        Gadget.create(name=f"s{i}", note=value)
    assert [g.note for g in Gadget.order_by("name")] == STRANGE
    assert Gadget.where(note=STRANGE[0]).first().name == "s0"
    assert Gadget.where("note = ?", STRANGE[3]).first().name == "s3"
    assert Gadget.count() == len(STRANGE)  # the table survived


# -- connections: using, using_connection, scopes ----------------------------------------------


def test_using_runs_one_query_on_another_connection(db: Connection, archive: Connection) -> None:
    Gadget.create(name="live")
    Gadget.using("archive").create(name="old")
    assert [g.name for g in Gadget.all()] == ["live"]
    old = Gadget.using("archive").where(name="old").first()
    assert old.name == "old"
    old.price = 5
    old.save()  # a row saves back where it was loaded from
    assert archive.execute("SELECT price FROM gadgets") == [(5,)]
    assert Gadget.where(name="old").first() is None


def test_using_connection_rebinds_the_model_inside_the_block_for_this_thread_only(
    db: Connection, archive: Connection
) -> None:
    seen_by_other_thread = []
    with Gadget.using_connection("archive"):
        Gadget.create(name="archived")
        assert Gadget.count() == 1
        other = threading.Thread(target=lambda: seen_by_other_thread.append(Gadget.count()))
        other.start()
        other.join()
    assert seen_by_other_thread == [0]  # the other thread still used 'main'
    assert Gadget.count() == 0
    assert archive.execute("SELECT name FROM gadgets") == [("archived",)]
    with pytest.raises(ConfigurationError, match="'nowhere'"), Gadget.using_connection("nowhere"):
        pass


def test_model_statements_run_in_the_active_transaction(db: Connection) -> None:
    with pytest.raises(RuntimeError), Transaction(db):
        Gadget.create(name="rolled back")
        assert Gadget.count() == 1  # sees its own write
        raise RuntimeError("abort")
    assert Gadget.count() == 0
    with Transaction(db):
        gadget = Gadget.create(name="kept")
        gadget.price = 3
        gadget.save()
    assert Gadget.first().price == 3


class _RecordingScope:
    """A scope like global_transaction()'s: one session per connection, transaction open."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.sessions: dict[str, tuple[Connection, Any]] = {}

    @contextlib.contextmanager
    def statement_session(
        self, connection: Connection, origin: str | None, statements: Any
    ) -> Iterator[Any]:
        self.calls.append((connection.name, origin))
        if connection.name not in self.sessions:
            session = connection.acquire()
            connection.dialect.run(session, "BEGIN")
            self.sessions[connection.name] = (connection, session)
        yield self.sessions[connection.name][1]

    def rollback(self) -> None:
        for connection, session in self.sessions.values():
            connection.dialect.run(session, "ROLLBACK")
            connection.release(session)


def test_every_model_statement_goes_through_the_scope_naming_the_model(db: Connection) -> None:
    scope = _RecordingScope()
    with activate(scope):
        gadget = Gadget.create(name="scoped", price=1)
        gadget.price = 2
        gadget.save()
        Gadget.where(name="scoped").first()
        Gadget.count()
        list(Gadget.batch(10))
        Gadget.raw_query("SELECT * FROM gadgets")
        Gadget.insert_or_update(name="scoped", price=3, conflict_keys=["name"])
        Gadget.bulk_insert_or_update([{"name": "other", "price": 1}], conflict_keys=["name"])
        gadget.delete()
        db.execute("SELECT 1")
    assert len(scope.calls) == 10  # one statement each (batch: one short page)
    assert set(scope.calls[:-1]) == {("main", "Gadget")}
    assert scope.calls[-1] == ("main", None)
    scope.rollback()
    assert Gadget.count() == 0  # nothing was written outside the scope's transaction


def test_get_connection_of_a_model_connection(db: Connection) -> None:
    assert get_connection(Gadget.__connection__) is db
    assert db.dialect.name in {"postgresql", "mysql", "sqlite"}


def test_forget_tables_picks_up_a_column_added_by_a_migration(archive: Connection) -> None:
    Gadget.using("archive").first()  # reads and caches the table's columns
    archive.execute("ALTER TABLE gadgets ADD COLUMN color TEXT")
    with pytest.raises(AttributeError, match="color"):
        Gadget.using("archive").create(name="x", price=1, color="red")
    archive.forget_tables()
    Gadget.using("archive").create(name="x", price=1, color="red")
    assert archive.execute("SELECT color FROM gadgets") == [("red",)]
