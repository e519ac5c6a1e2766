"""The cluster claim: evidence that no other live coordinator uses this cluster id on a database.

Why. Recovery takes every prepared xid of its cluster id on a registered resource for its own
(and MariaDB's `XA RECOVER` lists the xids of the whole server). Two coordinators with one
cluster id on one database would each judge the other's branches: one could decide ABORT for
the other's committed transaction and roll its branch back. The id is unique unless set on
purpose (`_datadir`); the claim catches the purposeful mistake (a copied config) too.

Rule. A coordinator holds, for its whole life, a lock named after its cluster id on every
registered resource, through one dedicated session per resource. The lock has the scope of
what recovery scans there:
- MySQL/MariaDB: `GET_LOCK('twostep.cluster.<id>', 0)`, server-wide like `XA RECOVER`.
- PostgreSQL: `pg_try_advisory_lock(<key>)`, the key the first 8 bytes of SHA-256 of the same
  name; per database, like the scan of `pg_prepared_xacts` (which keeps to its database).
The lock held by a session that is not this coordinator's is the evidence of another live
coordinator with this cluster id on that resource: the server ends the session, and so
releases the lock, when its process dies (and, through the session's idle timeout, when its
host vanished without closing the connection: `idle_timeout_s`, refreshed by every recovery
pass). Cheap: one statement per resource per pass.

Several resources on one server (MariaDB) or database (PostgreSQL) share one lock: the first of
this coordinator's sessions to take the cluster lock also takes a lock named after this process
(a random nonce). Another of its sessions that finds the cluster lock held compares holders:
the same session holding both locks is this coordinator. The checks of the resources on one
server (MariaDB: its host and port; PostgreSQL: and database) are serialized, so none sees
the first session between its two locks; those of other servers run alongside, so a server
that hangs holds up no other one's check.

What follows from a claim (`_server`, `recovery`):
- At start, a claim held by someone else refuses the start (`ClaimConflict`, after
  `_START_PATIENCE_S` for a coordinator that has just died and whose session is still being
  ended). A resource that cannot be reached, or does not answer within that patience, cannot
  be checked: a warning, and the claim is taken when recovery first reaches it.
- Recovery scans a resource only after `check` confirms the claim in that pass; a resource
  whose claim another session holds is reported (Status: the resource's error) and nothing on
  it is touched.

Replicas. Coordinator replicas that share one PostgreSQL decision log share one cluster id
on purpose, and share the claim rather than fight over it: the second lock is then named
after the store (`shared_by`, its id kept in the log database, `_log_store`) instead of the
process, so a cluster lock held by a session that also holds the store's lock is held by a
replica of the same store, and counts as this coordinator's. A coordinator with another store
(an embedded log, another database) finds the cluster lock held without its own second lock:
refused, as before. Between a replica's two locks another replica may look: a cluster lock
whose holder holds no second lock is looked at once more after `_SECOND_LOCK_WAIT_S`.
Recovery's replicas never drive one branch at once: the log's work locks split the work
(`recovery.act`, `DecisionLog.take_work`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from twostep.client import TwostepError

from ._registry import Resource, ResourceRegistry

__all__ = ["ClaimConflict", "ClusterClaims"]

log = logging.getLogger("twostep.coordinator.claim")

_START_PATIENCE_S = 5.0  # at start: how long a held claim is re-checked before refusing
_START_RETRY_S = 0.25
_SECOND_LOCK_WAIT_S = 0.2  # a replica of this store takes its second lock right after the first


class ClaimConflict(Exception):
    """Another live session holds this cluster id's claim on a registered resource."""


@dataclass(frozen=True)
class _Lock:
    """One named lock as each dialect spells it."""

    name: str  # MySQL/MariaDB GET_LOCK name

    @property
    def key(self) -> int:  # PostgreSQL advisory lock key (bigint)
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


# Per dialect: take the lock (1/True: taken), who holds it (a session id, or None), who we are.
_TAKE = {
    "mysql": "SELECT GET_LOCK(?, 0)",
    "postgresql": "SELECT pg_try_advisory_lock(?)",
}
_HOLDER_MYSQL = "SELECT IS_USED_LOCK(?)"
# A bigint key shows as classid (high half), objid (low half), objsubid 1 in pg_locks.
_HOLDER_PG = """
SELECT pid FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND objsubid = 1
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = ?::bigint::oid AND objid = ?::bigint::oid
"""
_ME = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}
_IDLE_TIMEOUT = {
    "mysql": "SET SESSION wait_timeout = ?",
    "postgresql": "SELECT set_config('idle_session_timeout', ?, false)",
}
_SESSION_KIND = {"mysql": "MariaDB/MySQL connection id", "postgresql": "PostgreSQL backend pid"}


class ClusterClaims:
    """This coordinator's claims on the registered resources; thread-safe."""

    def __init__(
        self,
        registry: ResourceRegistry,
        cluster_id: str,
        *,
        idle_timeout_s: int,
        shared_by: str = "",
    ):
        """`shared_by`: the name of the coordinators this claim is shared with (the replicas
        of one decision log store); "" for none but this process."""
        self._registry = registry
        self._cluster = cluster_id
        self._idle_timeout_s = idle_timeout_s
        self._cluster_lock = _Lock(f"twostep.cluster.{cluster_id}")
        self._process_lock = _Lock(f"twostep.{shared_by or f'process.{secrets.token_hex(8)}'}")
        self._lock = threading.Lock()  # guards the three dicts below; never held during I/O
        self._sessions: dict[str, Any] = {}  # resource name -> its dedicated session
        self._reported: dict[str, str] = {}  # resource name -> last why (logged once each)
        self._servers: dict[str, threading.Lock] = {}  # serializes the checks on one server

    def claim_all(self) -> None:
        """Take the claim on every resource (at start). Raises `ClaimConflict` naming each
        resource whose claim another session keeps holding for `_START_PATIENCE_S`; logs a
        warning for each resource it cannot reach (recovery claims it later)."""
        give_up = time.monotonic() + _START_PATIENCE_S
        pending = list(self._registry)
        refused: dict[str, str] = {}  # resource name -> why its claim was refused last time
        while True:
            conflicts = []
            # In parallel, each waited for until give_up at most: a check still waiting for
            # its database then goes on alone (its session's timeouts end it).
            pool = ThreadPoolExecutor(max(1, len(pending)), "twostep-claim")
            checks = [(r, pool.submit(self.check, r)) for r in pending]
            pool.shutdown(wait=False)
            patience = max(0.0, give_up - time.monotonic())
            concurrent.futures.wait([c for _, c in checks], timeout=patience)
            for resource, check in checks:
                if not check.done() and resource.name in refused:
                    # Refused before, not answered again in time: still refused (the last
                    # round's wait may be cut to nothing by the patience left).
                    conflicts.append((resource, refused[resource.name]))
                    continue
                try:
                    if not check.done():
                        raise TimeoutError(f"no answer within {_START_PATIENCE_S:g} s")
                    why = check.result()
                except Exception as exc:
                    log.warning(
                        "cannot check the cluster claim on a resource; recovery takes it, and "
                        "touches nothing there, once the resource is reachable",
                        extra={"resource": resource.name, "error": resource.redact(exc)},
                    )
                    continue
                if why:
                    conflicts.append((resource, why))
                    refused[resource.name] = why
            if not conflicts:
                return
            if time.monotonic() > give_up:
                raise ClaimConflict("; ".join(why for _, why in conflicts))
            pending = [resource for resource, _ in conflicts]
            time.sleep(_START_RETRY_S)

    def check(self, resource: Resource) -> str:
        """Confirm or take the claim on `resource`: "" when this coordinator holds it, else why
        not. Raises the driver's error (`TwostepError`) when the resource cannot be reached."""
        server = self._server_lock(resource)
        with server:
            session = self._session(resource)
            if session is not None:
                try:
                    return self._reported_as(resource, self._claim(resource, session))
                except TwostepError:  # the session broke (server restart, idle timeout): anew
                    self._drop(resource)
        # Connecting outside the lock: an unreachable resource holds up no other one's check.
        fresh = self._connect(resource)
        with server:
            with self._lock:
                session = self._sessions.setdefault(resource.name, fresh)
            if session is not fresh:  # a concurrent check connected first: use its session
                resource.connection.dialect.close(fresh)
            try:
                return self._reported_as(resource, self._claim(resource, session))
            except BaseException:
                self._drop(resource)
                raise

    def close(self) -> None:
        """End every claim session (the server releases their locks)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        for name, session in sessions.items():
            resource = self._registry.get(name)
            if resource is not None:
                resource.connection.dialect.close(session)

    # -- one resource ----------------------------------------------------------------------------

    def _server_lock(self, resource: Resource) -> threading.Lock:
        """The lock that serializes the checks on `resource`'s server (see the docstring)."""
        s = resource.connection.settings
        port = s.port or resource.connection.dialect.default_port
        server = f"{resource.dialect}://{s.host}:{port}"
        if resource.dialect == "postgresql":
            server += f"/{s.database}"
        with self._lock:
            return self._servers.setdefault(server, threading.Lock())

    def _session(self, resource: Resource) -> Any:
        with self._lock:
            return self._sessions.get(resource.name)

    def _reported_as(self, resource: Resource, why: str) -> str:
        """`why`, logged when it differs from the last answer for `resource` (under its
        server's lock)."""
        before = self._reported.get(resource.name)
        if before != why:
            self._reported[resource.name] = why
            extra = {"resource": resource.name, "cluster": self._cluster}
            if why:
                log.error("cluster claim held by another session", extra={**extra, "why": why})
            else:  # INFO only when it ends a refusal the log reported
                level = logging.INFO if before else logging.DEBUG
                log.log(level, "cluster claim taken", extra=extra)
        return why

    def _drop(self, resource: Resource) -> None:
        """Close and forget the resource's session (under its server's lock)."""
        with self._lock:
            session = self._sessions.pop(resource.name, None)
        if session is not None:
            resource.connection.dialect.close(session)

    def _connect(self, resource: Resource) -> Any:
        session = resource.connection.connect()
        try:
            seconds = self._idle_timeout_s
            if resource.dialect == "mysql":
                self._run(resource, session, _IDLE_TIMEOUT["mysql"], seconds)
            elif session.info.server_version >= 140000:  # idle_session_timeout is new in 14
                self._run(resource, session, _IDLE_TIMEOUT["postgresql"], f"{seconds}s")
        except BaseException:
            resource.connection.dialect.close(session)
            raise
        return session

    def _claim(self, resource: Resource, session: Any) -> str:
        me = self._run(resource, session, _ME[resource.dialect])
        holder = self._holder(resource, session, self._cluster_lock)
        if holder == me:
            return ""
        if holder is None and self._take(resource, session, self._cluster_lock):
            self._take(resource, session, self._process_lock)  # see the module docstring
            return ""
        holder = self._holder(resource, session, self._cluster_lock)
        second = self._holder(resource, session, self._process_lock)
        if holder is not None and second is None:  # maybe a replica between its two locks
            time.sleep(_SECOND_LOCK_WAIT_S)
            holder = self._holder(resource, session, self._cluster_lock)
            second = self._holder(resource, session, self._process_lock)
        if holder is not None and holder == second:
            # Held by this coordinator's session of another resource on this server, or by a
            # replica of this coordinator's decision log store.
            return ""
        if holder is None:
            return "the cluster claim was released while it was checked; checking again"
        return (
            f"cluster id {self._cluster!r} is claimed on resource {resource.name} "
            f"({resource.target}) by another session ({_SESSION_KIND[resource.dialect]} "
            f"{holder}): another live coordinator uses this cluster id on this database, and "
            "would take this coordinator's prepared branches for its own. Give each "
            "deployment its own cluster id (or none: one is generated per data directory)"
        )

    def _take(self, resource: Resource, session: Any, lock: _Lock) -> bool:
        name_or_key = lock.key if resource.dialect == "postgresql" else lock.name
        return bool(self._run(resource, session, _TAKE[resource.dialect], name_or_key))

    def _holder(self, resource: Resource, session: Any, lock: _Lock) -> int | None:
        if resource.dialect == "postgresql":
            high, low = (lock.key >> 32) & 0xFFFFFFFF, lock.key & 0xFFFFFFFF
            holder = self._run(resource, session, _HOLDER_PG, high, low)
        else:
            holder = self._run(resource, session, _HOLDER_MYSQL, lock.name)
        return None if holder is None else int(holder)

    @staticmethod
    def _run(resource: Resource, session: Any, sql: str, *params: Any) -> Any:
        """The first column of the first row (None if there is none)."""
        dialect = resource.connection.dialect
        rows = dialect.run(session, sql, params, connection=resource.name).rows
        return rows[0][0] if rows else None
