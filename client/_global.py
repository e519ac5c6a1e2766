"""`global_transaction()`: one atomic commit across several databases, through the coordinator.

The protocol is docs/design.md §2. The client's side of it, in the order it happens:
1. A branch starts on the first use of each named connection inside the block. PostgreSQL
   needs no id until PREPARE; MySQL needs the xid at `XA START`, so the first MySQL branch
   makes the gtrid (`ts2`, from the coordinator's description, asked once per process and
   minute: no call per transaction); a MySQL branch's bqual names the session that holds it,
   so recovery can always name the owner of a branch it must finish. Every timeout of a
   branch (lock waits, MySQL's idle timeout) derives from the deadline: the block's own, cut
   to the coordinator's max_timeout once the gtrid is made.
2. Statements run one at a time per branch (a lock per branch: threads that share the block
   take turns). When the block ends, every branch is closed first, so no statement reaches
   a branch session after that (`TransactionEnded`).
3. A branch that wrote nothing is finished without PREPARE (XA's read-only vote). If one
   writing branch is left, it commits with one phase and no Commit request. Two or more:
   PREPARE all in parallel; any NO vote or error rolls every branch back (Commit was never
   sent, so nobody can decide COMMIT).
4. Commit is sent only after checking that the coordinator is reachable: if it is not, the
   request certainly never left and the client still rolls back. Once Commit may have left,
   the only ways out are a COMMITTED or ABORTED decision for this gtrid, or closing every
   branch session (MariaDB detaches prepared branches) and `OutcomeUnknown`. Only a refusal
   of the very first attempt, with a status that means "not acted on", may roll back.
5. COMMITTED: commit every branch in parallel, retrying and reconnecting; then Ack. A branch
   found rolled back is a heuristic outcome (`HeuristicOutcome`, no Ack: recovery notes it).
   A block that rolls back sends Abort for a gtrid the coordinator may know, then Ack once
   every branch is rolled back (sent in that order, by the background outbox).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import grpc

from . import _fork
from ._branches import Branch, end_reader, on_each, prepare, rollback_all
from ._channel import ChannelConfig
from ._connections import Connection, activate, current_scope
from ._coordinator_client import (
    REFUSED_UNDECIDED,
    CoordinatorClient,
    Decided,
    client_for,
)
from ._enlist import Enlisted, dialect_of
from ._errors import (
    CoordinatorUnavailable,
    HeuristicOutcome,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    TransactionAborted,
    TransactionEnded,
    TransactionError,
    TwostepError,
    is_connection_failure,
)
from ._statements import Statements
from ._timeouts import check_timeout
from .tpc import failpoints as _failpoints
from .tpc.operations import BranchEscaped, VoteNo, require_two_phase
from .tpc.phase2 import Ended, finish_prepared, release_session
from .tpc.xid import Xid, new_gtrid, validate_resource_name

__all__ = ["GlobalTransaction", "Participant", "global_transaction"]

log = logging.getLogger("twostep.client")

DEFAULT_COORDINATOR = "127.0.0.1:50051"
_RPC_TIMEOUT = 5.0  # one coordinator call; a decision costs one fsync, so this is generous
_PROBE_TIMEOUT = 2.0  # how long to wait for a connection to the coordinator before Commit
_OUTCOME_PATIENCE = 10.0  # after the deadline, how long to keep asking for a lost decision


class Participant(Protocol):
    """Another library's unit of work in the block (a SQLAlchemy Session or Connection)."""

    def flush(self) -> None:
        """Send what is still pending; runs inside the block, as it ends."""

    def finish(self, committed: bool) -> None:
        """End the library's own view of the transaction, which the branches already ended."""


class GlobalTransaction:
    """The state of one `global_transaction()` block; `gtrid` names it to the admin CLI."""

    def __init__(self, coordinator: str, timeout: float, channel: ChannelConfig | None = None):
        self.coordinator = coordinator
        self.channel = channel  # TLS and the client token; None: from the environment
        self.timeout = check_timeout(timeout)
        self._pid = os.getpid()  # a forked child may not use or end it (_fork.check_owner)
        self._deadline = time.monotonic() + timeout
        self._gtrid: str | None = None
        self._branches: dict[str, Branch] = {}
        self._rollback_only: str | None = None
        self._finished = False
        self._participants: list[Participant] = []  # other libraries' sessions (add_participant)
        self._coordinator_client: CoordinatorClient | None = None  # looked up on first need
        # Guards _branches, _gtrid, _deadline and _finished: statements of one block may come
        # from several threads that share its context. Lock order: this one, then a branch's
        # `lock`; never the other way round. Never held across a coordinator call's retries.
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Whether the block still runs: its transaction has not begun to end."""
        return not self._finished

    @property
    def gtrid(self) -> str | None:
        """The global id, or None while the block has not needed the coordinator."""
        return self._gtrid

    def _client(self) -> CoordinatorClient:
        # Looked up once per transaction: the lookup reads the environment (ChannelConfig).
        if self._coordinator_client is None:
            self._coordinator_client = client_for(self.coordinator, self.channel)
        return self._coordinator_client

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _rpc_timeout(self) -> float:
        """How long a call before Commit may wait: never past the deadline (seconds)."""
        return min(_RPC_TIMEOUT, max(0.2, self._remaining()))

    def _ended_error(self, connection: str) -> TransactionEnded:
        return TransactionEnded(
            f"global transaction {self._gtrid or ''} has already ended (or is ending); "
            f"the statement on {connection!r} was not sent",
            gtrid=self._gtrid,
        )

    # -- inside the block ---------------------------------------------------------------------

    @contextlib.contextmanager
    def statement_session(
        self, connection: Connection, origin: str | None, statements: Statements
    ) -> Iterator[Any]:
        _fork.check_owner(self._pid, "this global transaction")
        with self._lock:
            if self._finished:
                raise self._ended_error(connection.name)
            branch = self._branches.get(connection.name)
            if branch is None:
                branch = self._start_branch(connection, origin, statements)
                self._branches[connection.name] = branch
            elif isinstance(branch.connection, Enlisted):
                raise _taken(connection.name)
            deadline = self._deadline
        with branch.lock:
            if branch.closed:
                raise self._ended_error(connection.name)
            if deadline < branch.bound:  # the coordinator granted less than the block asked
                branch.ops.set_lock_timeout(branch.session, _ms(deadline - time.monotonic()))
                branch.bound = deadline
            branch.may_write = branch.may_write or statements.may_write
            yield branch.session

    def _start_branch(
        self, connection: Connection, origin: str | None, statements: Statements
    ) -> Branch:
        ops = require_two_phase(connection.dialect.name, connection=connection.name, origin=origin)
        if self._remaining() <= 0:
            raise TransactionAborted("the global transaction's deadline passed", gtrid=self._gtrid)

        def begin(session: Any) -> Branch:
            session_id = ops.session_id(session)
            branch = Branch(connection, ops, session, None, session_id)
            if ops.dialect == "mysql":  # the xid is needed at XA START; it names the session
                branch.xid = Xid.for_branch(self._mint_gtrid(), connection.name, session_id)
            branch.bound = self._deadline
            # A MySQL branch that starts with a read counts its writes, so that it can be
            # finished without PREPARE if it writes nothing (see tpc.operations).
            ops.begin(
                session,
                branch.xid,
                lock_timeout_ms=_ms(self._remaining()),
                count_writes=not statements.may_write,
            )
            return branch

        return connection.acquire_for(begin)[1]

    # -- sessions of other libraries -----------------------------------------------------------

    def enlist(self, session: Any, *, resource: str) -> None:
        """Run `session`, a psycopg (3) or PyMySQL connection the application opened itself,
        as this transaction's branch on `resource`, until the block ends.

        `resource` names the database at the coordinator: it must be registered there (the
        same database) for recovery to finish the branch after a crash, and no other branch
        of this transaction may use it (one session per database and transaction). The
        session must be idle; from here to the end of the block its statements are part of
        the transaction, with lock waits bounded by the deadline, and its own `commit()` and
        `rollback()` are refused (psycopg: `ProgrammingError`; PyMySQL: the server's 1399,
        XAER_RMFAIL). When the block ends it is given back with its own settings
        (autocommit as before). SQLAlchemy: `twostep.client.sqlalchemy.enlist_engine`.

        Raises `TypeError` for another kind of object, `TwoPhaseNotSupported` for a sqlite3
        connection, `InvalidIdentifier` for a bad resource name, `TwostepError` for a session
        in a transaction or a resource that already has a branch here, `TransactionAborted`
        once the block is doomed or past its deadline, `TransactionEnded` after its end,
        `CoordinatorUnavailable` if the coordinator cannot describe itself (the gtrid is made
        here) and `DatabaseError` if BEGIN / XA START fails.
        """
        validate_resource_name(resource)
        dialect = dialect_of(session)
        ops = require_two_phase(dialect, connection=resource, origin=type(session).__name__)
        self.join(session, Enlisted(resource, dialect, ops))

    def join(self, session: Any, home: Enlisted) -> Branch:
        """Begin the branch of `home` on the driver session `session` (see `enlist`)."""
        _fork.check_owner(self._pid, "this global transaction")
        ops = home.ops
        with self._lock:
            if self._finished:
                raise self._ended_error(home.name)
            if self._rollback_only:
                raise TransactionAborted(
                    f"the global transaction will roll back ({self._rollback_only}); "
                    f"{home.name!r} was not enlisted",
                    gtrid=self._gtrid,
                )
            if home.name in self._branches:
                raise _taken(home.name)
            if self._remaining() <= 0:
                raise TransactionAborted(
                    "the global transaction's deadline passed", gtrid=self._gtrid
                )
            # Made now, so that the branch's lock timeouts are cut to the coordinator's
            # max_timeout from its first statement (no statement of it passes through here).
            gtrid = self._mint_gtrid()
            session_id = ops.session_id(session)
            branch = Branch(home, ops, session, Xid.for_branch(gtrid, home.name, session_id))
            branch.session_id, branch.bound = session_id, self._deadline
            remaining = _ms(self._remaining())

            def begin() -> None:
                # The first statement is the application's: count writes for the read-only vote.
                ops.begin(session, branch.xid, lock_timeout_ms=remaining, count_writes=True)

            home.take(session, begin)
            self._branches[home.name] = branch
        return branch

    def rolled_back_inside(self, branch: Branch) -> None:
        """The owner of an enlisted branch rolled it back inside the block (SQLAlchemy: a
        rollback, a Connection closed, a failed flush). It is rolled back now and given back;
        if it had written, the whole transaction can no longer commit (`TransactionAborted`
        at the end of the block); one that wrote nothing frees its resource."""
        with self._lock:
            if self._finished or branch.ended:
                return
            with branch.lock:
                try:
                    wrote = not branch.ops.wrote_nothing(branch.session)
                except (VoteNo, TwostepError):
                    wrote = True
                branch.ended = branch.closed = True
                try:
                    branch.ops.rollback_unprepared(branch.session, branch.xid)
                except TwostepError:
                    release_session(branch, discard=True)
                else:
                    release_session(branch)
            if wrote:
                self._mark_rollback_only(f"{branch.name} was rolled back inside the block")
            else:
                del self._branches[branch.name]

    def add_participant(self, participant: Participant) -> None:
        """Call `participant.flush()` when the block ends (inside it: statements may still
        join), and `participant.finish(committed)` once the transaction ended."""
        with self._lock:
            self._participants.append(participant)

    def _flush_participants(self) -> None:
        for participant in list(self._participants):
            participant.flush()

    def _finish_participants(self, committed: bool) -> None:
        for participant in self._participants:
            try:
                participant.finish(committed)
            except Exception:
                log.exception("an enlisted session was not ended", extra={"gtrid": self._gtrid})

    def _mint_gtrid(self) -> str:
        """The transaction's gtrid, made here (`ts2`) on first need from the coordinator's
        description: its cluster id, its clock for the deadline, its max_timeout, which cuts
        the block's own deadline, and this process's owner tag (only this identity may then
        commit, abort or acknowledge it). The caller holds `_lock`."""
        if self._gtrid is None:
            described = self._client().description(rpc_timeout=self._rpc_timeout())
            self._deadline = min(self._deadline, time.monotonic() + described.max_timeout_s)
            deadline_s = math.ceil(time.time() + described.clock_offset_s + self._remaining())
            self._gtrid = new_gtrid(
                described.cluster, deadline_s, minted=True, owner=described.owner
            )
        return self._gtrid

    def _mark_rollback_only(self, why: str) -> None:
        self._rollback_only = self._rollback_only or why

    # -- the end of the block -----------------------------------------------------------------

    def _end(self) -> list[Branch]:
        """Close the block to statements; waits for statements in flight on other threads.

        Returns the branches that are still open, in the order they started. Refuses a forked
        child: the transaction and its sessions are its parent's.
        """
        _fork.check_owner(self._pid, "this global transaction")
        with self._lock:
            self._finished = True
            branches = list(self._branches.values())
        for branch in branches:
            with branch.lock:
                branch.closed = True
                if isinstance(branch.connection, Enlisted) and not branch.ended:
                    branch.connection.close_statements(branch.session)
        return [b for b in branches if not b.ended]

    def _abort(self, reason: str) -> str:
        """Roll back every open branch; tell the coordinator if it knows the gtrid.

        Returns what happened to the data, for the error message.
        """
        branches = self._end()
        left = rollback_all(branches)
        if self._gtrid is not None:
            client = self._client()
            client.abort(self._gtrid, reason, [b.info() for b in branches])
            if not left:
                # Nothing of it is prepared anywhere: finished. Recovery could not tell for a
                # database it does not know, and would keep it in doubt for ever.
                client.ack(self._gtrid)
        if left:
            log.error(
                "prepared branches could not be rolled back; the coordinator will",
                extra={"gtrid": self._gtrid, "branches": left},
            )
            return (
                f"{', '.join(left)} could not be rolled back yet and stay prepared until the "
                "coordinator rolls them back (nothing was committed)"
            )
        return "every branch was rolled back"

    def _commit(self) -> None:
        branches = self._end()
        if self._rollback_only:
            outcome = self._abort(self._rollback_only)
            raise TransactionAborted(f"{self._rollback_only}: {outcome}", gtrid=self._gtrid)
        writers, readers = self._sort_out_readers(branches)
        if writers and self._remaining() <= 0:
            outcome = self._abort("deadline passed before commit")
            raise TransactionAborted(
                f"the global transaction's deadline passed before it committed; {outcome}",
                gtrid=self._gtrid,
            )
        # The coordinator never heard of the gtrid (made here): one writer or none needs no word.
        if len(writers) > 1:
            self._commit_two_phase(writers, readers)
            return
        if writers:
            self._commit_one_phase(writers[0])
        # Ended only now, so that their locking reads (FOR UPDATE) hold until the commit.
        on_each(readers, end_reader)

    def _sort_out_readers(self, branches: list[Branch]) -> tuple[list[Branch], list[Branch]]:
        """(branches that wrote, branches that wrote nothing): the latter are never prepared
        (XA's read-only vote) and are ended by one-phase commit once the writers committed."""
        asked = [b for b in branches if not b.may_write]
        outcomes = dict(on_each(asked, lambda b: b.ops.wrote_nothing(b.session)))
        failed = next(((b, o) for b, o in outcomes.items() if isinstance(o, Exception)), None)
        if failed is not None:
            branch, exc = failed
            outcome = self._abort(f"{branch.name} voted NO")
            raise self._no_vote(branch, exc, outcome) from exc
        readers = [b for b in branches if outcomes.get(b) is True]
        return [b for b in branches if b not in readers], readers

    def _no_vote(self, branch: Branch, exc: Exception, outcome: str) -> TransactionError:
        """The error for a branch that could not prepare (or commit), `outcome` being what
        the rollback of the others did: a heuristic outcome if the branch had escaped its
        transaction (what ran on it after that is committed), else nothing was committed."""
        if isinstance(exc, BranchEscaped):
            return HeuristicOutcome(
                f"{branch.name}: {exc}; the rest of the transaction: {outcome}", gtrid=self._gtrid
            )
        return TransactionAborted(
            f"{branch.name} could not prepare: {exc}; {outcome}", gtrid=self._gtrid
        )

    def _commit_one_phase(self, branch: Branch) -> None:
        try:
            branch.ops.commit_one_phase(branch.session, branch.xid)
        except VoteNo as exc:
            branch.ended = True
            release_session(branch, discard=True)
            outcome = self._abort(f"{branch.name} rolled back")
            raise self._no_vote(branch, exc, outcome) from exc
        except TwostepError as exc:
            branch.ended = True
            release_session(branch, discard=True)
            if is_connection_failure(exc):
                self._abort(f"the connection to {branch.name} failed during its commit")
                raise OutcomeUnknown(
                    f"the connection to {branch.name} failed during its one-phase commit; "
                    "only that database knows whether it committed",
                    gtrid=self._gtrid,
                ) from exc
            raise
        branch.ended = True
        release_session(branch)

    def _commit_two_phase(self, branches: list[Branch], readers: list[Branch]) -> None:
        try:
            with self._lock:
                gtrid = self._mint_gtrid()
        except CoordinatorUnavailable as exc:
            outcome = self._abort("coordinator unavailable before prepare")
            raise CoordinatorUnavailable(f"{exc}; {outcome}") from exc
        for branch in branches:
            if branch.xid is None:
                branch.xid = Xid.for_branch(gtrid, branch.name)

        _failpoints.failpoint(_failpoints.BEFORE_PREPARE)
        prepared = on_each(branches, prepare, between=_failpoints.BETWEEN_PREPARES)
        failures = [(b, out) for b, out in prepared if out is not None]
        if failures:
            branch, exc = failures[0]
            outcome = self._abort(f"{branch.name} voted NO")
            raise self._no_vote(branch, exc, outcome) from exc

        client = self._client()
        if not client.reachable(within=min(_PROBE_TIMEOUT, max(0.2, self._remaining()))):
            outcome = self._abort("coordinator unreachable before Commit")
            raise CoordinatorUnavailable(
                f"coordinator {self.coordinator} unreachable before Commit of {gtrid} was "
                f"sent; nothing was committed: {outcome}"
            )
        _failpoints.failpoint(_failpoints.BEFORE_COMMIT_REQUEST)
        decided = self._ask_for_commit(client, gtrid, branches)
        if not decided.committed:
            outcome = self._abort(f"coordinator decided ABORT: {decided.reason}")
            raise TransactionAborted(
                f"the coordinator decided ABORT ({decided.reason}); {outcome}", gtrid=gtrid
            )
        _failpoints.failpoint(_failpoints.AFTER_DECISION)
        self._finish_committed(client, gtrid, branches, readers)

    def _ask_for_commit(
        self, client: CoordinatorClient, gtrid: str, branches: Sequence[Branch]
    ) -> Decided:
        """The decision for `gtrid`. The only other way out is `OutcomeUnknown` with every
        branch session closed; a refusal of the first attempt rolls back (TransactionAborted).
        """
        infos = [b.info() for b in branches]
        give_up = max(self._deadline, time.monotonic()) + _OUTCOME_PATIENCE
        delay = 0.05
        first = True
        last = "no answer"
        try:
            while True:
                try:
                    wait = min(_RPC_TIMEOUT, max(0.2, give_up - time.monotonic()))
                    decided = client.commit(gtrid, infos, rpc_timeout=wait)
                    if decided is not None:
                        return decided
                    last = "a reply that holds no decision for this gtrid"
                except grpc.RpcError as exc:
                    if first and exc.code() in REFUSED_UNDECIDED:
                        self._refused(gtrid, exc)
                    last = f"{exc.code().name}: {exc.details()}"
                first = False
                if time.monotonic() + delay > give_up:
                    break
                log.warning("Commit unanswered, asking again", extra={"gtrid": gtrid, "why": last})
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        except TransactionAborted:
            raise
        except BaseException as exc:
            self._detach(branches)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the branches are left to the coordinator
            raise self._unknown(gtrid, f"{type(exc).__name__}: {exc}") from exc
        self._detach(branches)
        raise self._unknown(gtrid, last)

    def _refused(self, gtrid: str, exc: grpc.RpcError) -> None:
        """The first Commit was refused before the coordinator acted on it: roll back. (Also
        forget the coordinator's description: the gtrid made from it may be what it refused,
        e.g. another coordinator with another cluster id now answers at the address.)"""
        self._client().forget_description()
        outcome = self._abort(f"Commit refused: {exc.code().name}")
        raise TransactionAborted(
            f"the coordinator refused Commit before deciding ({exc.code().name}: "
            f"{exc.details()}); {outcome}",
            gtrid=gtrid,
        ) from exc

    def _unknown(self, gtrid: str, why: str) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"Commit of {gtrid} was sent but no decision came back from {self.coordinator} "
            f"(last: {why}); the branches are prepared and the coordinator alone will finish "
            "them: look up the gtrid",
            gtrid=gtrid,
        )

    def _detach(self, branches: Sequence[Branch]) -> None:
        for branch in branches:
            branch.ended = True
            release_session(branch, discard=True)

    def _finish_committed(
        self, client: CoordinatorClient, gtrid: str, branches: list[Branch], readers: list[Branch]
    ) -> None:
        # The readers end beside phase 2: the decision is the commit point, so their locks
        # are held until the transaction is committed.
        outcomes = on_each(
            [*branches, *readers],
            lambda b: end_reader(b) if b in readers else finish_prepared(b, commit=True),
            between=_failpoints.BETWEEN_COMMITS,
        )[: len(branches)]
        for branch, outcome in outcomes:
            branch.ended = True
            if isinstance(outcome, Exception):
                log.error(
                    "COMMIT PREPARED failed",
                    extra={"gtrid": gtrid, "xid": str(branch.xid)},
                    exc_info=outcome,
                )
                release_session(branch, discard=True)  # closed: the coordinator can finish it
        pending = [
            b.name
            for b, out in outcomes
            if out is Ended.STILL_PREPARED or isinstance(out, Exception)
        ]
        heuristic = [b.name for b, out in outcomes if out is Ended.OTHER_WAY]
        unverified = [b.name for b, out in outcomes if out is Ended.UNVERIFIED]
        # No Ack unless every branch is known committed: recovery then looks at the rest and
        # notes what it finds (a heuristic outcome, or a branch it cannot verify).
        if heuristic:
            raise HeuristicOutcome(
                f"{gtrid} was decided COMMIT but {', '.join(heuristic)} rolled back",
                gtrid=gtrid,
            )
        if pending:
            raise PhaseTwoIncomplete(
                f"{gtrid} is committed (the decision is durable) but "
                f"{', '.join(pending)} could not be committed yet; the coordinator will",
                gtrid=gtrid,
                pending=pending,
            )
        if unverified:
            log.warning(
                "branch no longer prepared and its database cannot tell how it ended; "
                "left to the coordinator to note",
                extra={"gtrid": gtrid, "branches": ",".join(unverified)},
            )
            return
        client.ack(gtrid)


def _taken(resource: str) -> TwostepError:
    # The coordinator takes one branch per resource and transaction (docs/design.md §6).
    return TwostepError(
        f"resource {resource!r} already has a branch in this global transaction (an enlisted "
        "session, or twostep's connection of that name): one session per database and "
        "transaction; nothing was sent"
    )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@contextlib.contextmanager
def global_transaction(
    coordinator: str | None = None, timeout: float = 30.0, channel: ChannelConfig | None = None
) -> Iterator[GlobalTransaction]:
    """Run the block as one atomic transaction across every database it touches.

    `coordinator` defaults to $TWOSTEP_COORDINATOR or 127.0.0.1:50051; `timeout` (seconds)
    bounds the whole transaction and every lock wait in it (the coordinator may grant less:
    its `max_timeout`); `channel` (TLS files, the client token) defaults to
    `ChannelConfig.from_env()` (TWOSTEP_COORDINATOR_CA / _CERT / _KEY, TWOSTEP_CLIENT_TOKEN).
    Nested blocks join the outer one (their arguments are ignored); an
    exception escaping a nested block dooms the outer one.

    Raises `TransactionAborted` (nothing committed), `CoordinatorUnavailable` (nothing
    committed), `OutcomeUnknown` (Commit sent, answer lost: look up `.gtrid`),
    `PhaseTwoIncomplete` (committed, some branches not yet), `HeuristicOutcome`,
    `TwoPhaseNotSupported` (SQLite), `ValueError` for a bad timeout, `ConfigurationError` for
    an unreadable TLS or token file, and, for statements,
    `DatabaseError`, `StatementRefused`, `TransactionEnded` and `PoolTimeout` (every session
    of a connection busy: the block is rolled back, nothing of that statement was sent).
    """
    outer = current_scope()
    if isinstance(outer, GlobalTransaction):
        try:
            yield outer
        except BaseException as exc:
            outer._mark_rollback_only(f"an inner block raised {type(exc).__name__}")
            raise
        return
    if outer is not None:
        raise TwostepError("global_transaction() cannot start inside a local Transaction")
    address = coordinator or os.environ.get("TWOSTEP_COORDINATOR") or DEFAULT_COORDINATOR
    gtx = GlobalTransaction(address, timeout, channel)
    with activate(gtx):
        try:
            yield gtx
            gtx._flush_participants()  # pending ORM changes are sent inside the block
        except BaseException as exc:
            gtx._abort(f"the block raised {type(exc).__name__}")
            gtx._finish_participants(committed=False)
            raise
    try:
        gtx._commit()
    except BaseException:
        gtx._finish_participants(committed=False)
        raise
    gtx._finish_participants(committed=True)
