"""Which database session a named connection's statements run on right now.

Outside any transaction a statement runs on a pooled session of its connection, committed at
once. Inside `Transaction(conn)` or `global_transaction()` the active scope hands out the
session that carries that connection's (branch) transaction, starting it on first use. The
scope lives in a context variable, so each thread (and asyncio task) has its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._connections import Connection

__all__ = ["Scope", "activate", "current_scope"]


class Scope(Protocol):
    def session_for(self, connection: Connection, origin: str | None) -> Any:
        """The driver connection to run `connection`'s next statement on, transaction open.

        `origin` names who is asking (a model class name) for error messages, e.g. the
        refusal of a SQLite connection inside a global transaction.
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
