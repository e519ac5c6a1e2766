"""What a forked child must not inherit from twostep, and the hooks that drop it in the child.

gunicorn `--preload`, multiprocessing's fork start method and a plain `os.fork()` give the child
a copy of everything twostep built in the parent: pooled database sessions, sessions held by a
transaction, the coordinator's gRPC channels and their outbox thread, the branch thread pool.
Used from both processes, a database socket hands each one the other's replies (the issue's
gunicorn runs lost money), and a thread pool or outbox thread that did not survive the fork
hangs the child.

The rule: nothing created in one process is ever used in another. Each holder of such state
registers a hook here (`in_child`, or `in_child_of` for one object); right after a fork, in
the child, before the child runs anything else, every hook runs: it drops what it holds and
replaces its locks (a thread that does not exist in the child may have held one at the fork),
and the child builds its own on first use. The parent is left alone. A transaction that was
open in the forking thread stays the parent's: `check_owner` refuses it in the child.

Dropping a database session must not send the goodbye that closing sends (PostgreSQL's
Terminate, MySQL's COM_QUIT): the server would end the session the parent is still using.
So before any other hook runs, the child points the socket of every inherited session at
/dev/null (`os.dup2`). Whatever the driver does with the object afterwards, `close()` and
finalizers included, writes nowhere and reads end-of-file, and the descriptor number stays
taken, so no file the child opens later can be mistaken for it. The parent's TCP connection
is untouched: it ends only when its last descriptor is closed, and the parent holds one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import TwostepError

__all__ = ["check_owner", "in_child", "in_child_of", "track_socket"]

log = logging.getLogger("twostep.client")

T = TypeVar("T")

# Guards the three registries below in the parent. The child never takes it (another thread
# may have held it at the fork); it replaces it.
_lock = threading.Lock()
_hooks: list[Callable[[], None]] = []
_object_hooks: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_sockets: weakref.WeakKeyDictionary[Any, Callable[[Any], int | None]] = weakref.WeakKeyDictionary()


def in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run `hook()` in every child forked from now on, right after the fork (usable as a
    decorator). Hooks run in the order they were registered, after the sockets of inherited
    sessions were pointed at /dev/null. A hook drops references; it closes nothing itself."""
    with _lock:
        _hooks.append(hook)
    return hook


def in_child_of(owner: T, hook: Callable[[T], None]) -> None:
    """Run `hook(owner)` in every child forked while `owner` is alive (held weakly)."""
    with _lock:
        _object_hooks[owner] = hook


def track_socket(session: T, socket_fd: Callable[[T], int | None]) -> T:
    """Remember a driver session of this process (weakly), so that a forked child points its
    socket at /dev/null before anything else runs. `socket_fd(session)` reads the descriptor
    at fork time (None once the session is closed); a session without one (SQLite) is not
    remembered. Returns `session`."""
    if socket_fd(session) is not None:
        with _lock:
            _sockets[session] = socket_fd
    return session


def check_owner(pid: int, what: str) -> None:
    """Raise `TwostepError` unless this is process `pid`: `what` ("this global transaction")
    was begun there, and its sessions are that process's, not a forked child's."""
    if pid != os.getpid():
        raise TwostepError(
            f"{what} was begun in process {pid}; this is process {os.getpid()}, forked from "
            "it, and a child cannot use or end its parent's transaction: fork outside the "
            "block, or run the child's work in a fresh contextvars.Context()"
        )


def _silence_inherited_sockets() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for session, socket_fd in list(_sockets.items()):
            fd = None
            with contextlib.suppress(Exception):  # a closed or broken session has none
                fd = socket_fd(session)
            if fd is not None and fd >= 0:
                os.dup2(devnull, fd, inheritable=False)  # as the socket was
    finally:
        os.close(devnull)
    _sockets.clear()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _run(_silence_inherited_sockets)
    for hook in _hooks:
        _run(hook)
    for owner, object_hook in list(_object_hooks.items()):
        _run(object_hook, owner)


def _run(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:  # the other hooks must still run
        log.exception("a twostep after-fork hook failed in the child")


os.register_at_fork(after_in_child=_after_fork_in_child)
