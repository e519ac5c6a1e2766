"""Column expressions for set-based updates, in the shape Django's `F()` made familiar.

    Account.where(id=1).update(balance=F("balance") - 5)
    # UPDATE accounts SET balance = balance - ? WHERE id = ?     (params: 5, 1)

The database computes the new value from the row as it is when the UPDATE locks it, so two
concurrent updates of one row never lose each other's change (a read in Python, a change and
a `save()` can: see `Query.for_update()` and `lock_version`).

Only `+`, `-` and `*`: `/` divides integers differently per database (PostgreSQL and SQLite
truncate, MySQL returns a decimal), so it is refused rather than sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._dialects import validate_identifier

__all__ = ["Arithmetic", "Expression", "F"]

#: `render` callbacks: a column name -> its quoted SQL; a literal operand -> its bound value.
ColumnSql = Callable[[str], str]
BindValue = Callable[[Any], Any]


class Expression:
    """Something `Query.update()` can assign: a column (`F`) or arithmetic on columns."""

    def render(self, column: ColumnSql, bind: BindValue) -> tuple[str, list[Any]]:
        """SQL with `?` placeholders and its parameters."""
        raise NotImplementedError

    def __add__(self, other: Any) -> Arithmetic:
        return Arithmetic(self, "+", other)

    def __radd__(self, other: Any) -> Arithmetic:
        return Arithmetic(other, "+", self)

    def __sub__(self, other: Any) -> Arithmetic:
        return Arithmetic(self, "-", other)

    def __rsub__(self, other: Any) -> Arithmetic:
        return Arithmetic(other, "-", self)

    def __mul__(self, other: Any) -> Arithmetic:
        return Arithmetic(self, "*", other)

    def __rmul__(self, other: Any) -> Arithmetic:
        return Arithmetic(other, "*", self)

    def __truediv__(self, other: Any) -> Arithmetic:
        raise TypeError(
            "column expressions do not divide: PostgreSQL and SQLite truncate integer "
            "division and MySQL does not, so the same update would store different values"
        )

    __rtruediv__ = __floordiv__ = __rfloordiv__ = __truediv__


@dataclass(frozen=True, eq=False)
class F(Expression):
    """The value of column `name` in the row being updated."""

    name: str

    def __post_init__(self) -> None:
        validate_identifier(self.name, "column name")

    def render(self, column: ColumnSql, bind: BindValue) -> tuple[str, list[Any]]:
        return column(self.name), []

    def __repr__(self) -> str:
        return f"F({self.name!r})"


@dataclass(frozen=True, eq=False)
class Arithmetic(Expression):
    """`left op right`; each side an expression or a number (bound, never formatted in)."""

    left: Any
    op: str
    right: Any

    def render(self, column: ColumnSql, bind: BindValue) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for side in (self.left, self.right):
            if isinstance(side, Expression):
                sql, more = side.render(column, bind)
                parts.append(sql)
                params.extend(more)
            else:
                parts.append("?")
                params.append(bind(side))
        return f"({parts[0]} {self.op} {parts[1]})", params

    def __repr__(self) -> str:
        return f"({self.left!r} {self.op} {self.right!r})"
