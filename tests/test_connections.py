"""Named connections, their session pool and raw SQL, on real PostgreSQL, MariaDB and SQLite.

Tests whose behaviour is the same on the three databases take the `db` fixture, which runs
them once per database on a fresh database (SQLite: a file in the test's tmp dir).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import twostep.client._connections as connections_module
from twostep.client import (
    ConfigurationError,
    Connection,
    ConnectionManager,
    DatabaseError,
    InvalidIdentifier,
    get_connection,
)
from twostep.client._dialects import DIALECTS
from twostep.client._transaction import Transaction
from twostep.testing import free_port

PASSWORD = "pw-Sekr1t-do-not-print"

# One table per dialect: an auto-generated key and a text column that takes any unicode.
NOTES_DDL = {
    "postgresql": "CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT)",
    "mysql": "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT)"
    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "sqlite": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
}


#: A MariaDB session that reads a backslash in a string as a plain character.
NO_BACKSLASH_ESCAPES = {
    "init_command": "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')"
}


@pytest.fixture(params=["postgresql", "mysql", "mysql-no-backslash-escapes", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Connection:
    """The connection 'main' on a fresh database of each dialect, with the table `notes`
    (MariaDB also in sql_mode NO_BACKSLASH_ESCAPES, which changes how strings are read)."""
    if request.param == "postgresql":
        config = request.getfixturevalue("pg_config")
    elif request.param == "mysql":
        config = request.getfixturevalue("maria_config")
    elif request.param == "mysql-no-backslash-escapes":
        config = {**request.getfixturevalue("maria_config"), "options": NO_BACKSLASH_ESCAPES}
    else:
        config = {"driver": "sqlite", "database": str(tmp_path / "main.db")}
    connection = ConnectionManager.configure("main", config)
    connection.execute(NOTES_DDL[connection.dialect.name])
    request.addfinalizer(ConnectionManager.close_all)
    return connection


def bodies(connection: Connection) -> list[str]:
    return [row[0] for row in connection.execute("SELECT body FROM notes ORDER BY id")]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "dialect"),
    [
        ("postgresql", "postgresql"),
        ("postgres", "postgresql"),
        ("mysql", "mysql"),
        ("mariadb", "mysql"),
    ],
)
def test_configure_accepts_each_driver_and_its_alias(driver: str, dialect: str) -> None:
    config = {"driver": driver, "host": "127.0.0.1", "database": "d", "username": "u"}
    connection = ConnectionManager.configure("cfg-test", config)
    assert get_connection("cfg-test") is connection
    assert connection.name == "cfg-test"
    assert connection.dialect.name == dialect


def test_configure_sqlite_needs_only_a_database(tmp_path: Any) -> None:
    connection = ConnectionManager.configure("cfg-test", {"driver": "sqlite", "database": "x.db"})
    assert connection.dialect.name == "sqlite"


def test_unknown_driver_is_a_configuration_error_naming_connection_and_field() -> None:
    with pytest.raises(ConfigurationError, match=r"'cfg-test'.*unknown driver 'oracle'.*'driver'"):
        ConnectionManager.configure("cfg-test", {"driver": "oracle", "database": "d"})


@pytest.mark.parametrize("missing", ["driver", "host", "database", "username"])
def test_missing_field_is_a_configuration_error_naming_connection_and_field(missing: str) -> None:
    config = {"driver": "mysql", "host": "127.0.0.1", "database": "d", "username": "u"}
    del config[missing]
    with pytest.raises(ConfigurationError, match=rf"connection 'cfg-test'.*'{missing}'"):
        ConnectionManager.configure("cfg-test", config)


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", "not-a-port"), ("port", 70000), ("connect_timeout", 0), ("pool_size", -1)],
)
def test_malformed_field_is_a_configuration_error_naming_it(field: str, value: Any) -> None:
    config = {"driver": "postgresql", "host": "h", "database": "d", "username": "u", field: value}
    with pytest.raises(ConfigurationError, match=rf"connection 'cfg-test'.*'{field}'"):
        ConnectionManager.configure("cfg-test", config)


def test_options_may_not_turn_autocommit_off() -> None:
    config = {"driver": "sqlite", "database": "x.db", "options": {"isolation_level": "DEFERRED"}}
    with pytest.raises(ConfigurationError, match="autocommit"):
        ConnectionManager.configure("cfg-test", config)


def test_unknown_field_is_named_but_its_value_is_not_shown() -> None:
    config = {"driver": "mysql", "host": "h", "database": "d", "username": "u", "passwd": PASSWORD}
    with pytest.raises(ConfigurationError, match="'passwd'") as info:
        ConnectionManager.configure("cfg-test", config)
    assert PASSWORD not in str(info.value)


def test_password_of_the_wrong_type_is_refused_without_showing_it() -> None:
    config = {"driver": "mysql", "host": "h", "database": "d", "username": "u", "password": 12345}
    with pytest.raises(ConfigurationError, match="'password' must be a string") as info:
        ConnectionManager.configure("cfg-test", config)
    assert "12345" not in str(info.value)


@pytest.mark.parametrize("name", ["", "has space", ".dot-first", "x" * 65, "semi;colon", None])
def test_connection_name_must_be_a_valid_resource_name(name: Any) -> None:
    with pytest.raises(InvalidIdentifier):
        ConnectionManager.configure(name, {"driver": "sqlite", "database": "x.db"})


def test_unknown_connection_is_a_configuration_error_listing_the_known_names() -> None:
    ConnectionManager.configure("cfg-known", {"driver": "sqlite", "database": "x.db"})
    with pytest.raises(ConfigurationError, match=r"'cfg-nope'.*configured: .*'cfg-known'"):
        get_connection("cfg-nope")


def test_password_is_absent_from_repr_and_str() -> None:
    config = {
        "driver": "postgresql",
        "host": "127.0.0.1",
        "database": "d",
        "username": "u",
        "password": PASSWORD,
    }
    connection = ConnectionManager.configure("cfg-test", config)
    for text in (repr(connection), str(connection), repr(connection.settings)):
        assert PASSWORD not in text
    assert "u@127.0.0.1:5432/d" in repr(connection)


@pytest.mark.parametrize("server", ["pg_config", "maria_config"])
def test_password_is_absent_from_connection_errors(
    server: str, request: pytest.FixtureRequest
) -> None:
    # A closed port on both; on MariaDB also a real server refusing the password.
    config = dict(request.getfixturevalue(server), password=PASSWORD)
    configs = [dict(config, port=free_port())]
    if server == "maria_config":
        configs.append(config)
    for bad in configs:
        connection = ConnectionManager.configure("cfg-test", bad)
        with pytest.raises(DatabaseError) as info:
            connection.execute("SELECT 1")
        assert info.value.connection == "cfg-test"
        error: BaseException | None = info.value
        while error is not None:
            assert PASSWORD not in str(error) and PASSWORD not in repr(error.args)
            error = error.__cause__ or error.__context__
    if server == "maria_config":
        assert info.value.code == "1045"  # access denied


def test_reconfiguring_a_name_replaces_it_and_closes_its_pooled_sessions(tmp_path: Any) -> None:
    first = ConnectionManager.configure("cfg-test", {"driver": "sqlite", "database": "a.db"})
    pooled, in_use = first.acquire(), first.acquire()
    first.release(pooled)
    second = ConnectionManager.configure(
        "cfg-test", {"driver": "sqlite", "database": str(tmp_path / "b.db")}
    )
    assert get_connection("cfg-test") is second
    assert not first.dialect.is_idle(pooled)  # closed
    assert first.dialect.is_idle(in_use)  # a session in use keeps working ...
    first.release(in_use)
    assert not first.dialect.is_idle(in_use)  # ... and is closed when given back


# -- sessions and the pool ---------------------------------------------------------------------


def test_a_new_session_is_in_driver_autocommit_with_no_transaction_open(db: Connection) -> None:
    session = db.connect()
    try:
        assert db.dialect.is_idle(session)
        db.dialect.run(session, "INSERT INTO notes (body) VALUES (?)", ("seen at once",))
        # Visible from another session without any COMMIT: the driver did not open a
        # transaction behind our back.
        assert bodies(db) == ["seen at once"]
        assert db.dialect.is_idle(session)
    finally:
        db.dialect.close(session)


def test_mysql_sessions_use_utf8mb4(maria_config: dict[str, Any]) -> None:
    connection = ConnectionManager.configure("main", maria_config)
    assert connection.execute("SELECT @@character_set_client, @@autocommit") == [("utf8mb4", 1)]
    ConnectionManager.close_all()


def test_pool_reuses_a_released_idle_session(db: Connection) -> None:
    session = db.acquire()
    db.release(session)
    again = db.acquire()
    assert again is session
    db.release(again)


def test_pool_discards_a_session_released_with_an_open_transaction(db: Connection) -> None:
    session = db.acquire()
    db.dialect.run(session, "BEGIN")
    db.dialect.run(session, "INSERT INTO notes (body) VALUES (?)", ("never committed",))
    assert not db.dialect.is_idle(session)
    db.release(session)
    again = db.acquire()
    assert again is not session
    assert bodies(db) == []  # closing the session rolled its transaction back
    db.release(again)


def test_pool_discards_a_session_released_with_discard(db: Connection) -> None:
    session = db.acquire()
    db.release(session, discard=True)
    assert not db.dialect.is_idle(session)
    again = db.acquire()
    assert again is not session
    db.release(again)


def test_pool_discards_a_mysql_session_inside_an_xa_branch(maria_config: dict[str, Any]) -> None:
    connection = ConnectionManager.configure("main", maria_config)
    session = connection.acquire()
    connection.dialect.run(session, "XA START 'pool-test'")
    connection.release(session)
    again = connection.acquire()
    assert again is not session
    connection.release(again)
    ConnectionManager.close_all()


def test_pool_replaces_a_session_the_server_killed(
    pg: Any, pg_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = ConnectionManager.configure("main", pg_config)
    session = connection.acquire()
    [(pid,)] = connection.dialect.run(session, "SELECT pg_backend_pid()").rows
    connection.release(session)
    with pg.admin_connect(pg_config["database"]) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # waits
    monkeypatch.setattr(connections_module, "_PING_AFTER_S", 0.0)
    assert connection.execute("SELECT 1") == [(1,)]  # the dead session was pinged and dropped
    ConnectionManager.close_all()


def test_pool_keeps_at_most_pool_size_idle_sessions(tmp_path: Any) -> None:
    config = {"driver": "sqlite", "database": str(tmp_path / "p.db"), "pool_size": 1}
    connection = ConnectionManager.configure("cfg-test", config)
    one, two = connection.acquire(), connection.acquire()
    connection.release(one)
    connection.release(two)
    assert connection.dialect.is_idle(one)
    assert not connection.dialect.is_idle(two)


def test_close_all_closes_idle_sessions_and_keeps_the_configuration(db: Connection) -> None:
    session = db.acquire()
    db.release(session)
    ConnectionManager.close_all()
    assert not db.dialect.is_idle(session)
    assert get_connection("main") is db
    assert db.execute("SELECT COUNT(*) FROM notes") == [(0,)]


def test_pool_never_hands_one_session_to_two_threads_at_once(tmp_path: Any) -> None:
    connection = ConnectionManager.configure(
        "cfg-test", {"driver": "sqlite", "database": str(tmp_path / "t.db"), "pool_size": 3}
    )
    owners: dict[int, int] = {}
    lock = threading.Lock()
    clashes = []

    def work() -> None:
        for _ in range(200):
            session = connection.acquire()
            with lock:
                if id(session) in owners:
                    clashes.append(session)
                owners[id(session)] = threading.get_ident()
            time.sleep(0)
            with lock:
                del owners[id(session)]
            connection.release(session)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    ConnectionManager.close_all()


def test_in_memory_sqlite_is_one_database_for_every_session_of_the_pool() -> None:
    connection = ConnectionManager.configure(
        "cfg-test", {"driver": "sqlite", "database": ":memory:"}
    )
    one, two = connection.acquire(), connection.acquire()
    connection.dialect.run(one, "CREATE TABLE t (x INT)")
    connection.dialect.run(one, "INSERT INTO t VALUES (?)", (7,))
    assert connection.dialect.run(two, "SELECT x FROM t").rows == [(7,)]
    connection.release(one)
    connection.release(two)
    ConnectionManager.close_all()
    assert connection.execute("SELECT x FROM t") == [(7,)]  # survives an empty pool


# -- running SQL -------------------------------------------------------------------------------


def test_execute_returns_rows_for_queries_and_the_row_count_otherwise(db: Connection) -> None:
    assert db.execute("INSERT INTO notes (body) VALUES (?), (?)", ("a", "b")) == 2
    assert db.execute("SELECT body FROM notes ORDER BY body") == [("a",), ("b",)]
    assert db.execute("SELECT body FROM notes WHERE body = ?", ("zzz",)) == []
    assert db.execute("UPDATE notes SET body = ? WHERE body = ?", ("c", "a")) == 1
    assert db.execute("DELETE FROM notes") == 2


def test_question_mark_and_percent_inside_string_literals_are_kept_verbatim(db: Connection) -> None:
    db.execute("INSERT INTO notes (body) VALUES ('what? 100%'), (?)", ("50% off?",))
    assert bodies(db) == ["what? 100%", "50% off?"]
    rows = db.execute("SELECT body FROM notes WHERE body LIKE '%?%' AND body <> ?", ("x",))
    assert sorted(rows) == [("50% off?",), ("what? 100%",)]
    assert db.execute("SELECT 'a?b', '50%', ? -- a comment? 10%", ("p",)) == [("a?b", "50%", "p")]


STRANGE_VALUES = [
    "Robert'); DROP TABLE notes;--",
    "' OR '1'='1",
    "\\'; DELETE FROM notes; --",
    'double "quotes" and `backticks`',
    "%s %(name)s %% %d ? ?? $1 :name",
    "Grüße, Ωμέγα, 日本語, עברית, العربية",
    "😀 👩‍👩‍👧 🏳️‍🌈 \U0001d518\U0001d52b\U0001d526 (fraktur) 𐍈",
    "zero\u200bwidth \u202eright-to-left\u202c e\u0301 combining, \ufeffBOM",
    "line\nbreaks\r\nand\ttabs",
    "",
]


def test_parameters_with_quotes_and_strange_unicode_are_stored_verbatim(db: Connection) -> None:
    for value in STRANGE_VALUES:
        db.execute("INSERT INTO notes (body) VALUES (?)", (value,))
    assert bodies(db) == STRANGE_VALUES
    # The injection attempt was data: the table is still there, and matches by equality.
    assert db.execute("SELECT COUNT(*) FROM notes WHERE body = ?", (STRANGE_VALUES[0],)) == [(1,)]


@pytest.mark.parametrize(
    ("dialect", "sql", "expected"),
    [
        ("postgresql", "SELECT ?, '?', \"a?\", ?", ("SELECT %s, '?', \"a?\", %s", 2)),
        ("postgresql", "x LIKE '5%' AND y % 2 = ?", ("x LIKE '5%%' AND y %% 2 = %s", 1)),
        ("postgresql", "SELECT 'it''s ?', E'\\'?', ?", ("SELECT 'it''s ?', E'\\'?', %s", 1)),
        ("postgresql", "SELECT $$?$$, $t$ ? $t$, $1", ("SELECT $$?$$, $t$ ? $t$, $1", 0)),
        ("postgresql", "SELECT 1 -- ?\n, /* ? */ ?", ("SELECT 1 -- ?\n, /* ? */ %s", 1)),
        ("mysql", "SELECT 'it\\'s ?', \"?\", `a?`, ?", ("SELECT 'it\\'s ?', \"?\", `a?`, %s", 1)),
        ("mysql", "SELECT ? # why?\n, 5 % 2", ("SELECT %s # why?\n, 5 %% 2", 1)),
        ("mysql", "SELECT 1 -- ?\n, '%'", ("SELECT 1 -- ?\n, '%%'", 0)),
        ("sqlite", "SELECT ?, '?', \"?\", [?], 5 % 2", ("SELECT ?, '?', \"?\", [?], 5 % 2", 1)),
        ("postgresql", "SELECT 'unterminated ?", ("SELECT 'unterminated ?", 0)),
    ],
)
def test_question_marks_become_driver_placeholders_only_outside_literals(
    dialect: str, sql: str, expected: tuple[str, int]
) -> None:
    assert DIALECTS[dialect].translate(sql) == expected


def test_wrong_number_of_parameters_is_refused_before_anything_is_sent(db: Connection) -> None:
    with pytest.raises(TypeError, match=r"2 \? placeholder.*1 parameter"):
        db.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1,))
    with pytest.raises(TypeError, match="list or tuple"):
        db.execute("INSERT INTO notes (body) VALUES (?)", "abc")
    assert bodies(db) == []


def test_driver_error_becomes_database_error_with_the_database_code(db: Connection) -> None:
    db.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "x"))
    with pytest.raises(DatabaseError) as duplicate:
        db.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "y"))
    with pytest.raises(DatabaseError) as syntax:
        db.execute("SELEC 1")
    expected = {
        "postgresql": ("23505", "42601"),  # SQLSTATE
        "mysql": ("1062", "1064"),  # server error number
        "sqlite": ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_ERROR"),
    }[db.dialect.name]
    assert (duplicate.value.code, syntax.value.code) == expected
    assert duplicate.value.connection == "main"
    assert "'main'" in str(duplicate.value)
    assert duplicate.value.__cause__ is not None
    # The failed statement left the pooled session usable.
    assert db.execute("SELECT body FROM notes") == [("x",)]


def test_execute_inside_a_transaction_runs_on_its_session_and_commits_only_with_it(
    db: Connection,
) -> None:
    with pytest.raises(RuntimeError), Transaction(db):
        db.execute("INSERT INTO notes (body) VALUES (?)", ("rolled back",))
        raise RuntimeError("abort")
    with Transaction(db):
        db.execute("INSERT INTO notes (body) VALUES (?)", ("committed",))
        assert db.execute("SELECT body FROM notes") == [("committed",)]  # sees its own write
    assert bodies(db) == ["committed"]
