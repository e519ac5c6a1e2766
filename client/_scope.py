"""Which database session a named connection's statements run on right now.

Outside any transaction a statement runs on a pooled session of its connection, committed at
once. Inside `Transaction(conn)` or `global_transaction()` the active scope lends out the
session that carries that connection's (branch) transaction, starting it on first use, for one
statement at a time: threads that share the scope (through `contextvars.copy_context()`) take
turns on a branch session, and once the transaction begins to end no statement reaches it.
The scope lives in a context variable, so each thread (and asyncio task) has its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._connections import Connection
    from ._statements import Statements

__all__ = ["Scope", "activate", "current_scope"]


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
