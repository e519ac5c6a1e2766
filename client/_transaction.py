"""`Transaction(conn)`: a transaction on one connection, with a manual two-phase API.

    with Transaction(get_connection("orders")) as tx:
        Order.create(id=1)
        tx.prepare()      # optional: the branch is now prepared (tx.xid names it)
    # leaving the block commits (COMMIT PREPARED if prepared), an exception rolls back

Its xids carry the reserved cluster id "local", which no coordinator may take, so a prepared
manual transaction is never finished by a coordinator's recovery: whoever prepares it owns it.
On MySQL/MariaDB the transaction starts as an XA branch so that it *can* be prepared (XA
refuses DDL); on SQLite `prepare()` raises `TwoPhaseNotSupported`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from . import _fork
from ._connections import Connection, activate, current_scope, get_connection
from ._errors import HeuristicOutcome, TransactionAborted, TransactionEnded, TwostepError
from ._statements import Statements
from ._timeouts import check_timeout
from .tpc.operations import BranchEscaped, VoteNo, local_ops, require_two_phase
from .tpc.phase2 import Ended, finish_prepared, release_session
from .tpc.xid import LOCAL_CLUSTER, Xid, new_gtrid

__all__ = ["Transaction"]


class Transaction:
    def __init__(self, connection: Connection | str, *, timeout: float | None = None):
        self.connection = get_connection(connection) if isinstance(connection, str) else connection
        self.ops = local_ops(self.connection.dialect.name)
        self.timeout = None if timeout is None else check_timeout(timeout)
        self.xid: Xid | None = None
        self.session: Any = None
        self.prepared = False
        self.transaction_id: int | None = None  # PostgreSQL: xid8, once prepared
        self._state = "new"  # new -> active -> committed | rolled back
        self._scope: Any = None
        self._pid = os.getpid()  # a forked child may not use or end it (_fork.check_owner)
        # Held while a statement runs on the session, and while the transaction ends: threads
        # that share the block's context take turns, and none runs after the end.
        self._lock = threading.Lock()
        self._closed = False  # commit or rollback has begun: no statement may start

    # -- the scope: statements on this connection run in this transaction --------------------

    @contextlib.contextmanager
    def statement_session(
        self, connection: Connection, origin: str | None, statements: Statements
    ) -> Iterator[Any]:
        _fork.check_owner(self._pid, "this transaction")
        if connection.name != self.connection.name:
            who = f"model {origin}" if origin else "a statement"
            raise TwostepError(
                f"{who} uses connection {connection.name!r} inside a Transaction on "
                f"{self.connection.name!r}; use global_transaction() to write to both"
            )
        with self._lock:
            if self._state != "active" or self.prepared or self._closed:
                raise TransactionEnded(
                    f"the transaction on {self.connection.name!r} is {self._status()}; "
                    "the statement was not sent"
                )
            yield self.session

    def _status(self) -> str:
        if self._state != "active":
            return self._state
        return "ending" if self._closed else "prepared" if self.prepared else "active"

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Transaction:
        if current_scope() is not None:
            raise TwostepError("a Transaction cannot start inside another transaction")
        if self._state != "new":
            raise TwostepError("a Transaction object can be used once")
        deadline = int(time.time() + self.timeout) if self.timeout else 0
        if self.ops.dialect == "mysql":
            # MySQL can only prepare what began as an XA branch.
            self.xid = Xid.of(new_gtrid(LOCAL_CLUSTER, deadline), self.connection.name)
        lock_ms = int(self.timeout * 1000) if self.timeout else None
        self.session, _ = self.connection.acquire_for(
            lambda session: self.ops.begin(session, self.xid, lock_ms)
        )
        self._state = "active"
        self._deadline_s = deadline
        self._scope = activate(self)
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.__exit__(exc_type, exc, tb)
        if self._state != "active":
            return
        if exc is None:
            self.commit()
        else:
            self.rollback()

    def prepare(self) -> Xid:
        """PREPARE the transaction (first phase); returns the xid that names it."""
        self._require_active()
        ops = require_two_phase(self.ops.dialect, connection=self.connection.name)
        if self.prepared:
            raise TwostepError("the transaction is already prepared")
        if self.xid is None:
            self.xid = Xid.of(new_gtrid(LOCAL_CLUSTER, self._deadline_s), self.connection.name)
        with self._lock:
            try:
                self.transaction_id = ops.prepare(self.session, self.xid)
            except VoteNo as exc:
                prepared = False
                failure: VoteNo | None = exc
            else:
                prepared, failure = True, None
            self.prepared = prepared
        if failure is not None:
            self.rollback()
            raise TransactionAborted(f"{self.xid} could not be prepared: {failure}") from failure
        return self.xid

    def commit(self) -> None:
        self._require_active()
        self._close()
        if self.prepared:
            ended = finish_prepared(self, commit=True)
            if ended is Ended.OTHER_WAY:
                self._state = "rolled back"
                raise TransactionAborted(f"{self.xid} was found rolled back (by someone else)")
            if ended is not Ended.AS_ASKED and ended is not Ended.UNVERIFIED:
                raise TwostepError(f"{self.xid} could not be committed; it is still prepared")
        else:
            try:
                self.ops.commit_one_phase(self.session, self.xid)
            except VoteNo as exc:
                self._state = "rolled back"
                release_session(self, discard=True)
                if isinstance(exc, BranchEscaped):
                    raise HeuristicOutcome(f"{self.connection.name!r}: {exc}") from exc
                raise TransactionAborted(f"{self.connection.name!r} rolled back: {exc}") from exc
            except BaseException:
                self._state = "rolled back"
                release_session(self, discard=True)
                raise
            release_session(self)
        self._state = "committed"

    def rollback(self) -> None:
        self._require_active()
        self._close()
        self._state = "rolled back"
        if self.prepared:
            ended = finish_prepared(self, commit=False)
            if ended is Ended.STILL_PREPARED:
                raise TwostepError(f"{self.xid} could not be rolled back; it is still prepared")
            return
        try:
            self.ops.rollback_unprepared(self.session, self.xid)
        except TwostepError:
            release_session(self, discard=True)  # a dead session takes its transaction along
            return
        release_session(self)

    def _close(self) -> None:
        """Wait for a statement in flight on another thread; let no new one start."""
        with self._lock:
            self._closed = True

    def _require_active(self) -> None:
        _fork.check_owner(self._pid, "this transaction")
        if self._state != "active":
            raise TwostepError(f"the transaction on {self.connection.name!r} is {self._state}")
