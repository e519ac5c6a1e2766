"""Named connections: their settings, a bounded pool of driver sessions, and where SQL runs.

    ConnectionManager.configure("orders", {"driver": "postgresql", "host": "127.0.0.1",
                                           "database": "shop", "username": "app",
                                           "password": "..."})
    get_connection("orders").execute("SELECT total FROM orders WHERE id = ?", (1,))

Config fields: `driver` (postgresql/postgres, mysql/mariadb, sqlite); `host`, `database`, `username`
(required, only `database` for SQLite: a file path or ":memory:"); `port` (default 5432 / 3306);
`password` (default empty); `connect_timeout` (seconds a new session may take, the server's greeting
and authentication included, default 10; SQLite's busy timeout); `io_timeout` (seconds each read and
write may wait once connected, then the session is broken off; default none: a statement may take as
long as it takes); `options` (extra keyword arguments for the driver's connect); the pool's
`pool_size` (sessions kept open between uses, default 8), `max_overflow` (how many more may be
opened for a burst and are closed when given back, default 8: the cap on open sessions is `pool_size
+ max_overflow`, 16 by default, so four such processes stay within PostgreSQL's default
max_connections of 100), `pool_timeout` (seconds a caller waits for a free session when the cap is
reached, default 5; then `PoolTimeout`, nothing sent). A connection's name is also its resource name
at the coordinator and its branches' qualifier, so it follows `validate_resource_name`.

Every pooled session is in driver-level autocommit with no transaction open. Transactions are
begun explicitly by whoever needs one (BEGIN, XA START), and a session goes back to the pool
only when it is idle again; otherwise it is closed, which ends whatever it still held. The
pool's mechanics (the cap, the wait in turn, the most recently used idle session first) are
in `_pool`, on SQLAlchemy's QueuePool; the rules of which session may be pooled and when one
is judged dead are here.

Where a statement runs is decided in one place, `Connection.run()`: inside `Transaction(conn)`
or `global_transaction()` on the session the active scope lends out (the connection's branch;
never committed here), otherwise on a pooled session, committed at once by autocommit. The
scope lends a branch session for one statement at a time: threads that share the scope
(through `contextvars.copy_context()`) take turns on it, and once the transaction begins to
end no statement reaches it. The scope lives in a context variable, so each thread (and
asyncio task) has its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol, TypeVar

from . import _fork
from ._dialects import (
    DRIVER_NAMES,
    ConnectionSettings,
    Dialect,
    StatementResult,
    TableInfo,
    dialect_for_driver,
)
from ._errors import (
    ConfigurationError,
    DatabaseError,
    StatementRefused,
    is_connection_failure,
    translate_driver_errors,
)
from ._pool import SessionPool
from ._statements import Statements
from .tpc.operations import local_ops
from .tpc.xid import validate_resource_name

__all__ = [
    "Connection",
    "ConnectionManager",
    "Scope",
    "activate",
    "current_scope",
    "get_connection",
]

T = TypeVar("T")

_FIELDS = (
    "driver",
    "host",
    "port",
    "database",
    "username",
    "password",
    "connect_timeout",
    "io_timeout",
    "options",
    "pool_size",
    "max_overflow",
    "pool_timeout",
)
#: A pooled session idle for longer than this is pinged before reuse: a dropped connection
#: that sent nothing (no FIN, no error packet) would otherwise fail the caller's first statement.
_PING_AFTER_S = 1.0


# -- the active scope: a transaction that lends its sessions ------------------------------------


class Scope(Protocol):
    def statement_session(
        self, connection: Connection, origin: str | None, statements: Statements
    ) -> AbstractContextManager[Any]:
        """Lend the driver session that runs `connection`'s transaction for one statement.

        Starts the branch on first use; holds the branch's lock while lent, so no other thread
        and not the end of the transaction uses the session meanwhile. `statements` is what the
        caller will send (whether it may write). `origin` names who is asking (a model class
        name) for error messages, e.g. the refusal of a SQLite connection inside a global
        transaction. Raises `TransactionEnded` once the transaction has begun to end.
        """
        ...


_current: ContextVar[Scope | None] = ContextVar("twostep_scope", default=None)


def current_scope() -> Scope | None:
    return _current.get()


@contextlib.contextmanager
def activate(scope: Scope) -> Iterator[None]:
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


# -- connections -------------------------------------------------------------------------------


class Connection:
    """A named database: its dialect, its settings and a pool of driver sessions."""

    def __init__(self, name: str, settings: ConnectionSettings, dialect: Dialect):
        self.name = name
        self.dialect = dialect
        self._ops = local_ops(dialect.name)
        self.settings = settings
        self._pool = SessionPool(
            name,
            connect=self.connect,
            close=dialect.close,
            usable=self._still_usable,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            timeout=settings.pool_timeout,
        )
        self._tables: dict[str, TableInfo] = {}
        # One table read at a time outside the pool (see `table`); never held while waiting
        # for anything but that read.
        self._describing = threading.Lock()
        # An in-memory SQLite database lives as long as one session is open: this one.
        self._anchor = self.connect() if dialect.needs_anchor(settings) else None
        _fork.in_child_of(self, Connection._forget_pool)

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> Connection:
        """A validated connection that is not registered (`ConnectionManager.configure`
        registers one); for code with its own registry, like the coordinator's resources."""
        validate_resource_name(name)
        dialect, settings = _parse_config(name, config)
        return cls(name, settings, dialect)

    def __repr__(self) -> str:
        s = self.settings
        if not self.dialect.has_server:
            where = s.database
        else:
            where = f"{s.username}@{s.host}:{s.port or self.dialect.default_port}/{s.database}"
        return f"<Connection {self.name!r} {self.dialect.name} {where}>"

    # -- sessions ------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new driver session, not pooled (nor counted against the pool's cap): autocommit,
        no transaction open."""
        try:
            with translate_driver_errors(self.name):
                return _fork.track_socket(
                    self.dialect.connect(self.settings), self.dialect.socket_fd
                )
        except Exception as exc:
            secret = self.settings.password
            if secret and _mentions(exc, secret):
                # Never observed, but a driver that echoes its connection string must not
                # carry the password into logs: drop the driver's exception, keep the rest.
                message = str(exc).replace(secret, "***")
                raise DatabaseError(
                    message, connection=self.name, code=getattr(exc, "code", None)
                ) from None
            raise

    def acquire(self) -> Any:
        """An idle session from the pool, or a new one while fewer than `pool_size +
        max_overflow` are open, with its own settings (what a branch last changed on it is
        put back first: `tpc.operations`). Give it back with `release()`, always.

        When all are in use, waits up to `pool_timeout` seconds for one to be released, then
        raises `PoolTimeout` (naming the connection and the cap). Raises `DatabaseError` if a
        new session cannot be opened.
        """
        return self.acquire_for(self._ops.restore_session)[0]

    def acquire_for(self, start: Callable[[Any], T]) -> tuple[Any, T]:
        """A session with `start(session)` run on it (begin a transaction, say): a pooled
        session the server ended a moment ago (its goodbye still on the way) fails the first
        statement, and nothing was done on it then, so a connection failure gets one more
        try on a new session. Any other failure closes the session and is raised."""
        for attempt in (1, 2):
            session = self._pool.checkout()
            try:
                return session, start(session)
            except BaseException as exc:
                self.release(session, discard=True)
                if attempt == 2 or not is_connection_failure(exc):
                    raise
        raise AssertionError("unreachable")

    def _still_usable(self, session: Any, released_at: float | None) -> bool:
        """Idle, and not ended by the server: an idle session has nothing to read, so a
        readable socket (a KILL's error packet, a shutdown, EOF) costs a ping to judge; so
        does a session idle for long (a silently dropped connection shows only then).
        `released_at` (monotonic s) is None for one that did not sit in the pool (just opened,
        or handed straight from its last user to a caller that waited)."""
        if not self.dialect.is_idle(session):
            return False
        quiet = not self.dialect.has_input(session)
        if quiet and (released_at is None or time.monotonic() - released_at < _PING_AFTER_S):
            return True
        try:
            self.dialect.ping(session)
        except Exception:
            return False
        return True

    def release(self, session: Any, *, discard: bool = False) -> None:
        """Give back a session from `acquire()`: to a caller waiting for one, or pooled
        again; closed instead if `discard`, if it is not idle (open transaction, broken,
        autocommit turned off), if `pool_size` sessions are idle already, or if this
        connection was reconfigured meanwhile. Either way its place is free again."""
        self._pool.checkin(session, keep=not discard and self.dialect.is_idle(session))

    def close_idle(self) -> None:
        """Close every idle pooled session; sessions in use stay open."""
        self._pool.close_idle()

    def _forget_pool(self) -> None:
        """In a forked child: the pooled sessions are the parent's; start with none (see
        _fork). The in-memory SQLite anchor stays: it holds the child's own copy."""
        self._pool.forget()
        self._describing = threading.Lock()  # a parent thread may have held it

    def _retire(self) -> None:
        """This connection was replaced: keep nothing pooled from now on (sessions in use
        are closed when released)."""
        self._pool.retire()
        if self._anchor is not None:
            self.dialect.close(self._anchor)

    # -- statements ----------------------------------------------------------------------------

    def run(
        self, sql: str, params: Sequence[Any] = (), *, origin: str | None = None
    ) -> StatementResult:
        """Run one `?`-placeholder statement where it belongs: on the active transaction's
        session for this connection (not committed here), else on a pooled session in
        autocommit. `origin` names the model class that issues it, for error messages.

        Inside a transaction, a statement that would end or leave it (COMMIT, ROLLBACK,
        BEGIN, XA ..., SET autocommit) raises `StatementRefused` and is not sent. Outside,
        a session whose connection failed is closed, never pooled again.
        """
        scope = current_scope()
        if scope is not None:
            statements = self.dialect.statements(sql)
            refused = statements.ends_transaction
            if refused is not None:
                raise StatementRefused(
                    f"{refused!r} on connection {self.name!r} would end or leave the "
                    "transaction it runs in; it was not sent. Leave the block (or raise) to "
                    "end the transaction"
                )
            with scope.statement_session(self, origin, statements) as session:
                return self.dialect.run(session, sql, params, connection=self.name)
        session = self.acquire()
        try:
            result = self.dialect.run(session, sql, params, connection=self.name)
        except BaseException as exc:
            self.release(session, discard=is_connection_failure(exc))
            raise
        self.release(session)  # closed instead if the statement left it non-idle
        return result

    def execute(
        self, sql: str, params: Sequence[Any] = (), *, origin: str | None = None
    ) -> list[tuple[Any, ...]] | int:
        """Run raw SQL with `?` placeholders: the rows if it returns rows, else the row count.

        Inside `global_transaction()` or `Transaction(...)` it runs on this connection's
        branch, exactly like a model's statements.
        """
        return self.run(sql, params, origin=origin).output

    def table(self, name: str) -> TableInfo:
        """Columns and primary key of a table, read once per connection and table name.

        Read on a session of its own, outside any transaction (it only reads): a pooled one;
        for a thread inside a transaction, one opened for the read and closed after, one at a
        time per connection. Such a thread may hold this connection's last free session
        itself (its branch), so waiting for a pooled one could wait for itself; the cap is
        passed by one session at most, and only while a table is read the first time.
        """
        info = self._tables.get(name)
        if info is None:
            info = self._describe(name)
            if info is None:
                raise ConfigurationError(
                    f"table {name!r} does not exist on connection {self.name!r} ({self!r})"
                )
            self._tables[name] = info
        return info

    def _describe(self, name: str) -> TableInfo | None:
        if current_scope() is None:
            session = self.acquire()
            try:
                return self.dialect.describe(session, name, connection=self.name)
            finally:
                self.release(session)
        with self._describing:
            info = self._tables.get(name)  # read by another thread meanwhile
            if info is not None:
                return info
            session = self.connect()
            try:
                return self.dialect.describe(session, name, connection=self.name)
            finally:
                self.dialect.close(session)

    def forget_tables(self) -> None:
        """Read table definitions again on next use (after a migration changed them)."""
        self._tables.clear()


class ConnectionManager:
    """The process-wide registry of named connections."""

    # Guards _connections. A connection's own lock is never taken while holding this one.
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _connections: ClassVar[dict[str, Connection]] = {}

    @classmethod
    def configure(cls, name: str, config: Mapping[str, Any]) -> Connection:
        """Define (or replace) the connection `name`; replacing closes its pooled sessions.

        Sessions in use keep working until they are released, then they are closed.
        """
        connection = Connection.from_config(name, config)
        with cls._lock:
            previous = cls._connections.get(name)
            cls._connections[name] = connection
        if previous is not None:
            previous._retire()
        return connection

    @classmethod
    def get_connection(cls, name: str) -> Connection:
        with cls._lock:
            connection = cls._connections.get(name)
            known = sorted(cls._connections)
        if connection is None:
            listed = ", ".join(map(repr, known)) or "none"
            raise ConfigurationError(
                f"no connection named {name!r} is configured (configured: {listed}); "
                "use ConnectionManager.configure()"
            )
        return connection

    @classmethod
    def names(cls) -> list[str]:
        with cls._lock:
            return sorted(cls._connections)

    @classmethod
    def close_all(cls) -> None:
        """Close every idle pooled session of every connection (configurations stay)."""
        with cls._lock:
            connections = list(cls._connections.values())
        for connection in connections:
            connection.close_idle()


# A thread that does not exist in a forked child may have held it at the fork.
_fork.in_child(lambda: setattr(ConnectionManager, "_lock", threading.Lock()))


def get_connection(name: str) -> Connection:
    """The connection configured as `name`; `ConfigurationError` if there is none."""
    return ConnectionManager.get_connection(name)


# -- config ------------------------------------------------------------------------------------


def _parse_config(name: str, config: Mapping[str, Any]) -> tuple[Dialect, ConnectionSettings]:
    """Validated settings; errors name the connection and the field, never a field's value
    (a misplaced password must not end up in a log)."""
    where = f"connection {name!r}"
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"{where}: the config must be a dict, not {type(config).__name__}")
    unknown = sorted(str(key) for key in config if key not in _FIELDS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"known fields: {', '.join(_FIELDS)}"
        )
    driver = config.get("driver")
    if driver is None:
        raise ConfigurationError(f"{where}: missing field 'driver' ({', '.join(DRIVER_NAMES)})")
    dialect = dialect_for_driver(driver.lower()) if isinstance(driver, str) else None
    if dialect is None:
        raise ConfigurationError(
            f"{where}: unknown driver {driver!r} in field 'driver'; "
            f"use one of {', '.join(DRIVER_NAMES)}"
        )

    def text(field: str) -> str | None:
        value = config.get(field)
        if value is None or value == "":
            if field in dialect.required_fields:
                raise ConfigurationError(f"{where}: missing field {field!r} ({dialect.name})")
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"{where}: field {field!r} must be a string")
        return value

    database = text("database")
    assert database is not None  # required by every dialect
    served = dialect.has_server  # SQLite ignores the network fields
    timeout = _seconds(where, "connect_timeout", config.get("connect_timeout"))
    io_timeout = _seconds(where, "io_timeout", config.get("io_timeout"))
    defaults = ConnectionSettings(dialect.name, database)
    pool_size = _integer(where, "pool_size", config.get("pool_size"), 0, 1000)
    max_overflow = _integer(where, "max_overflow", config.get("max_overflow"), 0, 1000)
    pool_timeout = _seconds(where, "pool_timeout", config.get("pool_timeout"))
    settings = ConnectionSettings(
        dialect=dialect.name,
        database=database,
        host=text("host") if served else None,
        port=_integer(where, "port", config.get("port"), 1, 65535) if served else None,
        username=text("username") if served else None,
        password=(text("password") or "") if served else "",
        connect_timeout=defaults.connect_timeout if timeout is None else timeout,
        io_timeout=io_timeout if served else None,
        options=_options(where, config.get("options")),
        pool_size=defaults.pool_size if pool_size is None else pool_size,
        max_overflow=defaults.max_overflow if max_overflow is None else max_overflow,
        pool_timeout=defaults.pool_timeout if pool_timeout is None else pool_timeout,
    )
    if settings.pool_size + settings.max_overflow == 0:
        raise ConfigurationError(
            f"{where}: fields 'pool_size' and 'max_overflow' are both 0, so no session could "
            "ever be opened; give one of them a positive value"
        )
    return dialect, dialect.normalize(settings)


def _integer(where: str, field: str, value: Any, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{where}: field {field!r} must be an integer in {low}..{high}")
    return value


def _seconds(where: str, field: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{where}: field {field!r} must be a positive number of seconds")
    return seconds


def _options(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"{where}: field 'options' must be a dict of keyword arguments")
    if "autocommit" in value or "isolation_level" in value:
        raise ConfigurationError(
            f"{where}: field 'options' may not set autocommit or isolation_level: twostep "
            "sessions are always in driver-level autocommit and begin transactions explicitly"
        )
    return dict(value)


def _mentions(exc: BaseException, secret: str) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if secret in str(seen) or any(secret in repr(arg) for arg in seen.args):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
