"""The bank of `twostep demo`: accounts on PostgreSQL and on MariaDB, and transfers that debit
one side and credit the other in one `global_transaction()`, through the public model API.

Each transfer writes its id and amount on both sides, so that the end state can be checked
against what the client was told: money is conserved, and a transfer is on both databases or
on neither (`Bank.check`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twostep.client import (
    ActiveRecord,
    ConnectionManager,
    CoordinatorUnavailable,
    F,
    HeuristicOutcome,
    OutcomeUnknown,
    PhaseTwoIncomplete,
    TwostepError,
    get_connection,
    global_transaction,
)

__all__ = ["MARIA", "PG", "Bank", "Outcome", "Result", "Tally"]

# The connection names, which are also the coordinator's resource names: recovery finishes a
# branch through the resource of the same name.
PG = "demo_pg"
MARIA = "demo_maria"
ACCOUNTS = 20  # per database: enough that concurrent transfers seldom wait for each other
INITIAL_BALANCE = 1_000  # of every account
TIMEOUT_S = 5  # of each transfer: an orphan left by the outage is aborted soon after it


class PgAccount(ActiveRecord):
    __connection__ = PG
    __tablename__ = "accounts"


class PgTransfer(ActiveRecord):
    __connection__ = PG
    __tablename__ = "transfers"


class MariaAccount(ActiveRecord):
    __connection__ = MARIA
    __tablename__ = "accounts"


class MariaTransfer(ActiveRecord):
    __connection__ = MARIA
    __tablename__ = "transfers"


class Outcome(enum.Enum):
    """What the client was told of one transfer."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"  # nothing was committed (the exception says why)
    UNKNOWN = "outcome unknown"  # OutcomeUnknown: the coordinator's recovery decides
    HEURISTIC = "heuristic"  # a branch ended against the decision: must never happen here


@dataclass(frozen=True)
class Result:
    """One transfer: its id, what the client was told, and why (the exception's class name)."""

    transfer_id: str
    outcome: Outcome
    why: str = ""


@dataclass
class Tally:
    """The results of many transfers, by outcome and reason."""

    results: list[Result] = field(default_factory=list)

    def ids(self, outcome: Outcome) -> set[str]:
        return {r.transfer_id for r in self.results if r.outcome is outcome}

    def reasons(self, outcome: Outcome) -> dict[str, int]:
        """How many transfers had `outcome`, by reason."""
        found: dict[str, int] = {}
        for r in self.results:
            if r.outcome is outcome:
                found[r.why] = found.get(r.why, 0) + 1
        return found


@dataclass(frozen=True)
class Balances:
    """The end state: the sum of the balances on each side (in whole units), and the
    transfers recorded on each side (id -> amount)."""

    pg: int
    maria: int
    pg_transfers: dict[str, int]
    maria_transfers: dict[str, int]

    @property
    def total(self) -> int:
        return self.pg + self.maria


class Bank:
    """The demo's accounts and transfers on the databases configured as `pg` and `maria`
    (twostep client configs), through the coordinator at `coordinator` (HOST:PORT)."""

    initial_total = 2 * ACCOUNTS * INITIAL_BALANCE

    def __init__(self, pg: dict[str, Any], maria: dict[str, Any], coordinator: str):
        ConnectionManager.configure(PG, pg)
        ConnectionManager.configure(MARIA, maria)
        self.coordinator = coordinator

    def create_schema(self) -> None:
        """The two tables on each database, every account with `INITIAL_BALANCE`."""
        for name in (PG, MARIA):
            connection = get_connection(name)
            connection.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT)")
            connection.execute(
                "CREATE TABLE transfers (id VARCHAR(32) PRIMARY KEY, account INT, amount BIGINT)"
            )
        rows = [{"id": n, "balance": INITIAL_BALANCE} for n in range(ACCOUNTS)]
        PgAccount.bulk_insert_or_update(rows)
        MariaAccount.bulk_insert_or_update(rows)

    def transfer(self, transfer_id: str, rng: random.Random) -> Result:
        """Move a random amount from a PostgreSQL account to a MariaDB account, atomically."""
        debit, credit = rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS)
        amount = rng.randint(1, 50)
        try:
            with global_transaction(coordinator=self.coordinator, timeout=TIMEOUT_S):
                PgAccount.where(id=debit).update(balance=F("balance") - amount)
                PgTransfer.create(id=transfer_id, account=debit, amount=amount)
                MariaAccount.where(id=credit).update(balance=F("balance") + amount)
                MariaTransfer.create(id=transfer_id, account=credit, amount=amount)
        except PhaseTwoIncomplete:  # committed; recovery finishes the rest
            return Result(transfer_id, Outcome.COMMITTED)
        except HeuristicOutcome as exc:
            return Result(transfer_id, Outcome.HEURISTIC, str(exc))
        except OutcomeUnknown:
            return Result(transfer_id, Outcome.UNKNOWN, "OutcomeUnknown")
        except (CoordinatorUnavailable, TwostepError) as exc:
            # Raised before Commit could be sent, or inside the block: every branch was
            # rolled back (TransactionAborted, CoordinatorUnavailable, a lock wait past the
            # deadline, ...).
            return Result(transfer_id, Outcome.ROLLED_BACK, type(exc).__name__)
        return Result(transfer_id, Outcome.COMMITTED)

    def balances(self) -> Balances:
        """The sums and the transfers as the databases hold them now."""
        return Balances(
            sum(a.balance for a in PgAccount.all()),
            sum(a.balance for a in MariaAccount.all()),
            {t.id: t.amount for t in PgTransfer.all()},
            {t.id: t.amount for t in MariaTransfer.all()},
        )

    def check(self, balances: Balances, tally: Tally) -> list[str]:
        """Every way the end state is wrong, as sentences (empty: money is conserved, each
        side agrees with its transfers, each transfer is on both sides or neither, with one
        amount, and what the client was told of a transfer is what happened)."""
        wrong = []
        if balances.total != self.initial_total:
            wrong.append(f"money not conserved: {balances.total} != {self.initial_total}")
        half = self.initial_total // 2
        debited, credited = _sum(balances.pg_transfers), _sum(balances.maria_transfers)
        if balances.pg != half - debited:
            wrong.append(f"PostgreSQL's balances {balances.pg} disagree with its debits")
        if balances.maria != half + credited:
            wrong.append(f"MariaDB's balances {balances.maria} disagree with its credits")
        pg_ids, maria_ids = set(balances.pg_transfers), set(balances.maria_transfers)
        if pg_ids != maria_ids:
            wrong.append(f"transfers on one side only: {_few(pg_ids ^ maria_ids)}")
        differ = {
            t for t in pg_ids & maria_ids if balances.pg_transfers[t] != balances.maria_transfers[t]
        }
        if differ:
            wrong.append(f"transfers with two amounts: {_few(differ)}")
        lost = tally.ids(Outcome.COMMITTED) - (pg_ids & maria_ids)
        if lost:
            wrong.append(f"transfers told committed are missing: {_few(lost)}")
        ghosts = tally.ids(Outcome.ROLLED_BACK) & (pg_ids | maria_ids)
        if ghosts:
            wrong.append(f"transfers told rolled back are there: {_few(ghosts)}")
        heuristic = tally.ids(Outcome.HEURISTIC)
        if heuristic:
            wrong.append(f"heuristic outcomes: {_few(heuristic)}")
        return wrong


def _sum(amounts: dict[str, int]) -> int:
    return sum(amounts.values())


def _few(ids: Iterable[str], limit: int = 5) -> str:
    shown = sorted(ids)
    more = f" (+{len(shown) - limit} more)" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more
