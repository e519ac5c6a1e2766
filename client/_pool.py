"""The bounded pool of one named connection's driver sessions, on SQLAlchemy's `QueuePool`.

At most `pool_size + max_overflow` sessions are open at once; `pool_size` of them are kept idle
between uses, the overflow ones are closed when given back. A caller that finds every session
in use waits, first come first served, up to `pool_timeout` seconds, then gets `PoolTimeout`.
A session given back while someone waits goes straight to the oldest waiter; otherwise to
QueuePool, which hands out the most recently used idle session first (warm; the rest age).
twostep keeps the rules, given by `Connection`: how a session is opened and closed, which one
may be pooled again (idle, not discarded), and the checks on checkout.

Why QueuePool (issue 8, measured against DBUtils' PooledDB and psycopg_pool): one pool for
psycopg, PyMySQL and sqlite3 alike (it takes any creator function); it counts the sessions,
keeps the idle ones, opens and closes outside its lock, and puts a place back when a connect
fails. Its reset on return (a ROLLBACK per release) and pre-ping (a round trip per checkout)
are off: a session comes back only when idle, and the checkout checks are local unless
something looks wrong (`Connection._still_usable`). Its own wait is not used: it is not fair
(sqlalchemy issue #7679, open): a thread that gives a session back and asks again at once
takes it before the waiter it woke has run. Measured with 64 threads on 16 sessions: some
waiters waited the whole 5 s timeout while the pool served thousands of checkouts a second.
psycopg_pool hands sessions over in order, but only for PostgreSQL; PooledDB waits without a
timeout. So the wait, and the hand-over, are here.

SQLAlchemy hands out a proxy per checkout; callers get the driver's own session and this module
keeps the proxy until the session is given back. So a session that is never released holds
its place until the process ends: every `checkout()` has its `checkin()`. Private names of
QueuePool used here (its queue of idle entries, what it does with a returned entry) are why
pyproject.toml caps SQLAlchemy below its next minor version.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as _sa_exc
from sqlalchemy.pool import QueuePool
from sqlalchemy.pool.base import _ConnDialect
from sqlalchemy.util import queue as _sa_queue

from ._errors import PoolTimeout

__all__ = ["SessionPool"]

# Where a pooled session's release time is kept: its QueuePool entry's `info` dict, which
# SQLAlchemy clears whenever the entry gets a new session.
_RELEASED_AT = "twostep_released_at"

# What a forked child inherited from its parent's pools (see `SessionPool.forget`): kept,
# never used and never freed, for the life of the child.
_inherited: list[object] = []


class _Closer(_ConnDialect):
    """How QueuePool closes a session: the dialect's own close, which never raises (a plain
    `close()` raises on a PyMySQL session the server already ended, and QueuePool would log
    that as an error)."""

    def __init__(self, close: Callable[[Any], None]):
        self._close = close

    def do_close(self, dbapi_connection: Any) -> None:
        self._close(dbapi_connection)

    def do_terminate(self, dbapi_connection: Any) -> None:
        self._close(dbapi_connection)


class _Waiter:
    """A caller waiting for a place: `turn` is released when it gets one, with the session
    given back by its last holder in `proxy`, or None (then it takes one from QueuePool)."""

    __slots__ = ("proxy", "turn")

    def __init__(self) -> None:
        self.proxy: Any = None
        self.turn = threading.Lock()
        self.turn.acquire()


class SessionPool:
    """The sessions of connection `name`: at most `pool_size + max_overflow` open at once.

    `connect()` opens a session (it may raise; the error reaches the caller of `checkout`),
    `close(session)` closes one and never raises, `usable(session, released_at)` judges an
    idle session on checkout (`released_at`: monotonic seconds, None if it was not idle in the
    pool: just opened, or handed over at once).
    """

    def __init__(
        self,
        name: str,
        *,
        connect: Callable[[], Any],
        close: Callable[[Any], None],
        usable: Callable[[Any, float | None], bool],
        pool_size: int,
        max_overflow: int,
        timeout: float,
    ):
        if pool_size < 0 or max_overflow < 0 or pool_size + max_overflow < 1 or timeout <= 0:
            raise ValueError("a pool needs room for one session and a positive timeout")
        self.name = name
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.timeout = timeout
        self._connect = connect
        self._closer = _Closer(close)
        self._usable = usable
        self._start()

    def _start(self) -> None:
        # QueuePool reads pool_size 0 as "no limit": with nothing kept idle, all the places
        # are its pool_size, and every release closes (`checkin`).
        self._queue = QueuePool(
            self._connect,
            pool_size=self.pool_size or self.max_overflow,
            max_overflow=self.max_overflow if self.pool_size else 0,
            timeout=self.timeout,
            use_lifo=True,
            reset_on_return=None,
            dialect=self._closer,
            logging_name=self.name,
        )
        # Guards everything below. Held only for a few list and dict operations: never while
        # waiting, connecting, closing or calling into QueuePool.
        self._lock = threading.Lock()
        self._free = self.cap  # places no caller holds (nor is being handed)
        self._waiters: deque[_Waiter] = deque()  # oldest first
        # The proxy of every session checked out, by id(session): held until checkin.
        self._out: dict[int, Any] = {}
        self._retired = False

    @property
    def cap(self) -> int:
        """How many sessions may be open at once."""
        return self.pool_size + self.max_overflow

    def checkout(self) -> Any:
        """An idle session that passed `usable`, or a new one; waits up to `timeout` seconds
        while every session is in use, then raises `PoolTimeout`."""
        proxy = self._take_place()
        try:
            while True:
                if proxy is None:
                    proxy = self._queue.connect()
                session = proxy.dbapi_connection
                if self._usable(session, proxy.info.pop(_RELEASED_AT, None)):
                    break
                stale, proxy = proxy, None
                stale.invalidate()  # closes it; the next connect() opens a new one
        except BaseException as exc:
            if proxy is not None:  # the check itself failed: the session is suspect
                proxy.invalidate()
            self._pass_place()
            if isinstance(exc, _sa_exc.TimeoutError):  # only while close_idle() holds all
                raise self._exhausted() from None
            raise
        with self._lock:
            self._out[id(session)] = proxy
        return session

    def _take_place(self) -> Any:
        """Hold one place: at once if one is free and nobody waits, else after the waiters
        before us. Returns the session handed over with it, if any."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return None
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            handed = waiter.turn.acquire(timeout=self.timeout)
        except BaseException:  # interrupted: leave the line, or give back what came
            if not self._leave_line(waiter):
                self._give_back(waiter.proxy, keep=True)
            raise
        if not handed and self._leave_line(waiter):
            raise self._exhausted()
        return waiter.proxy  # handed over, if only between the timeout and the lock

    def _leave_line(self, waiter: _Waiter) -> bool:
        """Remove `waiter` from the line; False if it was handed a place already."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return True
            return False

    def _pass_place(self) -> None:
        """Give up a place, without a session: to the oldest waiter, else free."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().turn.release()
            else:
                self._free += 1

    def _exhausted(self) -> PoolTimeout:
        return PoolTimeout(
            f"connection {self.name!r}: no session came free within {self.timeout:g} s; all "
            f"{self.cap} it may open (pool_size {self.pool_size} + max_overflow "
            f"{self.max_overflow}) are in use; nothing was sent",
            connection=self.name,
            cap=self.cap,
            timeout=self.timeout,
        )

    def checkin(self, session: Any, *, keep: bool) -> None:
        """Give back a session from `checkout`: to the oldest waiter, or pooled if fewer than
        `pool_size` are idle; closed unless `keep`, or if the pool was retired. A session this
        pool did not hand out is closed."""
        with self._lock:
            proxy = self._out.pop(id(session), None)
        if proxy is None:
            self._closer.do_close(session)
        else:
            self._give_back(proxy, keep=keep)

    def _give_back(self, proxy: Any, *, keep: bool) -> None:
        """Release the place of a checked-out proxy (None: a place without a session)."""
        with self._lock:
            keep = keep and proxy is not None and not self._retired and self.pool_size > 0
            if keep and self._waiters:
                waiter = self._waiters.popleft()
                waiter.proxy = proxy
                waiter.turn.release()
                return
        if proxy is None:
            self._pass_place()
            return
        try:
            if keep:
                proxy.info[_RELEASED_AT] = time.monotonic()
                proxy.close()  # back to QueuePool: pooled, or closed if pool_size are idle
            else:
                proxy.invalidate()
        finally:
            self._pass_place()

    def close_idle(self) -> None:
        """Close every idle session now; the sessions in use stay open. Each closed one keeps
        its place in QueuePool, empty: the next checkout that gets it opens a new session."""
        queue = self._queue._pool  # QueuePool's own queue of entries (the idle ones)
        entries = []
        while True:
            try:
                entries.append(queue.get(False))
            except _sa_queue.Empty:
                break
        for entry in entries:
            entry.close()
            self._queue._do_return_conn(entry)  # what QueuePool does with a returned entry

    def retire(self) -> None:
        """Close the idle sessions, and every session in use when it is given back."""
        with self._lock:
            self._retired = True
        self.close_idle()

    def forget(self) -> None:
        """In a forked child: start empty, with new locks. What the parent's pool held is
        kept, unused, for the child's lifetime: freeing it would run QueuePool's return of
        the sessions in use, which takes a lock a parent thread may have held at the fork."""
        _inherited.append((self._queue, self._out))
        self._start()

    def idle_sessions(self) -> list[Any]:
        """The idle sessions, the most recently used last (for tests and diagnostics)."""
        queue = self._queue._pool
        with queue.mutex:
            entries = list(queue.queue)
        return [e.dbapi_connection for e in entries if e.dbapi_connection is not None]
