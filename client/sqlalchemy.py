"""SQLAlchemy sessions and connections in `global_transaction()`.

    engine = create_engine("postgresql+psycopg://app@db/shop")
    twostep.client.sqlalchemy.enlist_engine(engine, resource="orders")   # once, at setup

    session = Session(engine)
    with global_transaction():
        session.add(Order(id=1, total=30))     # the ORM, as usual
        Invoice.create(order_id=1, amount=30)  # twostep's models, or another enlisted engine
    # both committed, or neither; the session's transaction ended with the block

Inside the block, a transaction that begins on an enlisted engine's connection (a Session's,
or a Core `Connection`'s) becomes the branch of `resource` (`GlobalTransaction.join`, the same
branch operations as twostep's own). When the block ends, every Session that had an object
added or began a transaction inside it is flushed (still inside), the branches are
prepared and committed together, and then each Session and Connection ends its own
transaction (`commit()` or `rollback()`, which no longer reach the databases).

What SQLAlchemy's own calls do inside the block (docs/design.md §6, "Enlisted sessions"):
- `session.commit()` / `connection.commit()` raise `StatementRefused` and change nothing: a
  commit of one branch alone would break atomicity, and a commit that quietly did not commit
  would mislead the code after it. Leave the block to commit (`flush()` sends changes early).
- a rollback (`rollback()`, closing a Connection or Session that has a transaction, or
  SQLAlchemy's own after a failed flush) rolls that branch back at once; if it had written,
  the whole global transaction will roll back (`TransactionAborted` at the block's end).
- statements that would end the transaction (COMMIT, ROLLBACK, XA ...) are refused before
  they are sent, as for twostep's connections; so is a statement on an enlisted engine's
  connection whose transaction began before the block.
- a Session that begins a transaction on an engine that is not enlisted is refused
  (`TwoPhaseNotSupported`): it would commit on its own after the others.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from ._branches import Branch
from ._connections import current_scope
from ._dialects import DIALECTS
from ._enlist import Enlisted
from ._errors import ConfigurationError, StatementRefused, TwoPhaseNotSupported
from ._global import GlobalTransaction
from .tpc.operations import require_two_phase
from .tpc.xid import validate_resource_name

__all__ = ["enlist_engine"]

#: SQLAlchemy dialect name -> twostep dialect; the drivers whose connections the branch
#: operations speak to.
_DIALECTS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql"}

_lock = threading.Lock()  # guards _engines and the one-time Session listeners
_engines: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
#: Connections whose transaction is a branch: (its transaction, its branch).
_joined: weakref.WeakKeyDictionary[Connection, tuple[GlobalTransaction, Branch]] = (
    weakref.WeakKeyDictionary()
)
#: Sessions that take part in a transaction (flushed at its end, then ended).
_sessions: weakref.WeakKeyDictionary[Session, GlobalTransaction] = weakref.WeakKeyDictionary()
_sessions_listened = False


def enlist_engine(engine: Engine, *, resource: str) -> None:
    """Make every transaction on `engine` that begins inside `global_transaction()` a branch
    on `resource`, the database's name at the coordinator (registered there, for recovery).

    `engine`: a SQLAlchemy `Engine` on PostgreSQL with psycopg (3) (`postgresql+psycopg`)
    or on MySQL/MariaDB with PyMySQL (`mysql+pymysql`, `mariadb+pymysql`). Outside the block
    the engine works as before. Calling it again with the same resource changes nothing.

    Raises `InvalidIdentifier` for a bad resource name, `TwoPhaseNotSupported` for SQLite,
    `ConfigurationError` for another database or driver, or an engine enlisted under
    another resource, and `TypeError` for anything but an `Engine`.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"enlist_engine() takes a SQLAlchemy Engine, not {type(engine).__name__}")
    validate_resource_name(resource)
    name = engine.dialect.name
    if name == "sqlite":
        require_two_phase("sqlite", connection=resource, origin=f"SQLAlchemy engine {engine.url}")
    dialect = _DIALECTS.get(name)
    if dialect is None or engine.dialect.driver != _DRIVERS[dialect]:
        raise ConfigurationError(
            f"engine {engine.url} ({name}+{engine.dialect.driver}) cannot be enlisted: twostep "
            "runs branches on postgresql+psycopg and mysql+pymysql (or mariadb+pymysql)"
        )
    with _lock:
        known = _engines.get(engine)
        if known == resource:
            return
        if known is not None:
            raise ConfigurationError(f"engine {engine.url} is enlisted as {known!r} already")
        _engines[engine] = resource
        _listen_to_sessions()
    hooks = _EngineHooks(resource, dialect)
    event.listen(engine, "begin", hooks.begin)
    event.listen(engine, "commit", hooks.commit)
    event.listen(engine, "rollback", hooks.rollback)
    event.listen(engine, "before_cursor_execute", hooks.before_cursor_execute)


def _active() -> GlobalTransaction | None:
    scope = current_scope()
    return scope if isinstance(scope, GlobalTransaction) else None


class _EngineHooks:
    """The engine events of one enlisted engine."""

    def __init__(self, resource: str, dialect: str):
        self.resource = resource
        self.dialect = dialect
        self.ops = require_two_phase(dialect, connection=resource)

    def begin(self, conn: Connection) -> None:
        gtx = _active()
        if gtx is None:
            return

        def discard(_session: Any) -> None:
            conn.invalidate()  # closes the driver connection; SQLAlchemy then knows it

        home = Enlisted(self.resource, self.dialect, self.ops, guard=False, discard=discard)
        branch = gtx.join(conn.connection.dbapi_connection, home)
        _joined[conn] = (gtx, branch)
        gtx.add_participant(_ConnectionEnd(conn))

    def commit(self, conn: Connection) -> None:
        joined = _joined.get(conn)
        if joined is not None and joined[0].is_open:
            raise StatementRefused(
                f"commit() on SQLAlchemy connection of {self.resource!r} inside "
                "global_transaction() would commit that database alone; nothing was sent. "
                "Leave the block to commit (flush() sends pending changes now)"
            )

    def rollback(self, conn: Connection) -> None:
        joined = _joined.get(conn)
        if joined is not None and joined[0].is_open:
            joined[0].rolled_back_inside(joined[1])

    def before_cursor_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        gtx = _active()
        if gtx is None:
            return
        joined = _joined.get(conn)
        if joined is None or joined[0] is not gtx or joined[1].ended:
            raise StatementRefused(
                f"a statement on {self.resource!r} inside global_transaction() came on a "
                "SQLAlchemy connection whose transaction is not part of it (begun before the "
                "block, or rolled back in it); it was not sent"
            )
        refused = DIALECTS[self.dialect].statements(statement).ends_transaction
        if refused is not None:
            raise StatementRefused(
                f"{refused!r} on {self.resource!r} would end or leave the global transaction "
                "it runs in; it was not sent. Leave the block (or raise) to end the transaction"
            )


class _ConnectionEnd:
    """A Core connection's part: its SQLAlchemy transaction ends with the branch."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def flush(self) -> None:
        pass  # Core sends every statement at once

    def finish(self, committed: bool) -> None:
        _joined.pop(self.conn, None)
        transaction = self.conn.get_transaction()
        if transaction is None:  # ended by its Session already
            return
        # The databases are done; a transaction SQLAlchemy deactivated (a refused commit) or
        # invalidated (a session dropped in doubt) only takes a rollback, which sends nothing.
        if committed and transaction.is_valid:
            self.conn.commit()
        else:
            self.conn.rollback()


class _SessionEnd:
    """A Session's part: flushed as the block ends, then its transaction ends with the
    branches (expiring its objects as a commit or rollback does)."""

    def __init__(self, session: Session):
        self.session = session

    def flush(self) -> None:
        self.session.flush()

    def finish(self, committed: bool) -> None:
        _sessions.pop(self.session, None)
        if committed:
            self.session.commit()
        else:
            self.session.rollback()


def _join_session(session: Session) -> None:
    gtx = _active()
    if gtx is None or _sessions.get(session) is gtx:
        return
    _sessions[session] = gtx
    gtx.add_participant(_SessionEnd(session))


def _session_began(session: Session, transaction: SessionTransaction, conn: Connection) -> None:
    gtx = _active()
    if gtx is None:
        return
    if conn not in _joined:
        raise TwoPhaseNotSupported(
            f"a Session began a transaction on {conn.engine.url} inside global_transaction(), "
            "an engine that is not enlisted (twostep.client.sqlalchemy.enlist_engine): it "
            "would commit on its own, so it is refused and nothing was sent"
        )
    _join_session(session)


def _session_attach(session: Session, instance: object) -> None:
    _join_session(session)


def _session_commit(session: Session) -> None:
    gtx = _sessions.get(session)
    if gtx is not None and gtx.is_open:
        raise StatementRefused(
            "session.commit() inside global_transaction() would commit its databases alone; "
            "nothing was sent and the session is unchanged. Leave the block to commit "
            "(session.flush() sends pending changes now)"
        )


def _listen_to_sessions() -> None:
    """Session events, for every Session of the process (cheap when no block runs). The
    caller holds `_lock`."""
    global _sessions_listened
    if _sessions_listened:
        return
    event.listen(Session, "after_begin", _session_began)
    event.listen(Session, "before_attach", _session_attach)
    event.listen(Session, "before_commit", _session_commit)
    _sessions_listened = True
