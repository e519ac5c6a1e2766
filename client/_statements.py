"""What a statement does to the transaction around it, read from its text before it is sent.

Inside `global_transaction()` or `Transaction(conn)` a statement runs on the branch's session.
Two questions about it are answered here, from the code words of each statement in the text
(string literals and comments removed by the dialect's lexer, MySQL's executable comments
`/*! ... */` and `/*M! ... */` kept as code, since the server runs them):

`Statements.ends_transaction`
    The statement that would end, restart or leave the branch's transaction: COMMIT, ROLLBACK
    (but not ROLLBACK TO a savepoint), END, ABORT, BEGIN, START TRANSACTION, PREPARE
    TRANSACTION, COMMIT/ROLLBACK PREPARED, XA ..., or a SET of autocommit. PostgreSQL would
    run it and leave the branch in autocommit, so every later statement of the block would
    commit on its own (a torn transaction); it is refused before anything is sent.
`Statements.may_write`
    False when every statement is a plain read (SELECT, SHOW, DESCRIBE, EXPLAIN, VALUES,
    TABLE). Only a hint: a SELECT can call a function that writes, so a branch that saw no
    other statement is asked on the server before it is finished without PREPARE
    (`tpc.operations.BranchOps.wrote_nothing`); a wrong "may write" only costs a PREPARE.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

__all__ = ["Statements", "classify"]

_WORD = re.compile(r"@{0,2}[A-Za-z_][A-Za-z0-9_$]*")
_EXECUTABLE_COMMENT = re.compile(r"/\*M?!(?:\d{5,6})?(?P<code>.*?)(?:\*/|\Z)", re.DOTALL)
_READS = frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE"})
_ENDS = frozenset({"COMMIT", "END", "ABORT", "BEGIN", "XA"})


@dataclass(frozen=True)
class Statements:
    """The code words (upper case) of each statement in one SQL text, in order."""

    words: tuple[tuple[str, ...], ...]

    @property
    def may_write(self) -> bool:
        return any(w and w[0] not in _READS for w in self.words)

    @property
    def ends_transaction(self) -> str | None:
        """The first statement (its leading words) that would end the transaction, or None."""
        for w in self.words:
            if _ends(w):
                return " ".join(w[:3])
        return None


def _ends(w: tuple[str, ...]) -> bool:
    if not w:
        return False
    first, rest = w[0], w[1:]
    if first in _ENDS:
        return True
    if first == "ROLLBACK":
        # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name keeps the transaction open.
        return "TO" not in rest[:2]
    if first in ("START", "PREPARE"):
        return rest[:1] == ("TRANSACTION",)
    if first == "SET":
        return any(word.lstrip("@") == "AUTOCOMMIT" for word in rest)
    return False


@functools.lru_cache(maxsize=1024)
def classify(
    lexer: re.Pattern[str], sql: str, *, identifier_quotes: str, executable_comments: bool
) -> Statements:
    """The statements of `sql` as a dialect's `lexer` (see `_dialects`) splits them.

    `identifier_quotes`: the characters that open a quoted identifier in the dialect (its
    text counts as a word); `executable_comments`: MySQL's `/*! ... */` is code.
    """
    return Statements(_split(_code(lexer, sql, identifier_quotes, executable_comments)))


@functools.lru_cache(maxsize=1024)
def classify_postgresql(sql: str) -> Statements:
    """The statements of `sql` as PostgreSQL reads them, either way it may read them.

    PostgreSQL nests block comments, and reads a backslash in '...' as an escape when the
    session set `standard_conforming_strings = off` (a branch may set it): the text is scanned
    under both readings and a statement found by either counts (a regular expression cannot
    nest, and the setting is the session's, so the guard takes the stricter answer).
    """
    standard = _split(_postgresql_code(sql, backslash_quotes=False))
    escaped = _split(_postgresql_code(sql, backslash_quotes=True))
    return Statements(standard if standard == escaped else standard + escaped)


def _split(code: str) -> tuple[tuple[str, ...], ...]:
    """The upper-case code words of each `;`-separated statement of `code`.

    A SQL-standard routine body (`CREATE ... BEGIN ATOMIC ...; ...; END`) is one statement:
    its inner statements cannot end the transaction (PostgreSQL refuses them there).
    """
    statements: list[tuple[str, ...]] = []
    open_body = False
    for part in code.split(";"):
        words = []
        for match in _WORD.finditer(part):
            word = match[0]
            if word.startswith("@") and not word.startswith("@@"):
                continue  # a user variable, never a keyword
            words.append(word.upper())
        if open_body:
            statements[-1] += tuple(words)
            open_body = words[:1] != ["END"]
            continue
        statements.append(tuple(words))
        open_body = words[:1] == ["CREATE"] and _has_pair(words, "BEGIN", "ATOMIC")
    return tuple(statements)


def _has_pair(words: list[str], first: str, second: str) -> bool:
    return any(a == first and b == second for a, b in itertools.pairwise(words))


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _postgresql_code(sql: str, *, backslash_quotes: bool) -> str:
    """`sql` with PostgreSQL's literals and (nested) comments blanked out; a quoted
    identifier keeps its text."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        after_word = i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "'" or (c in "eE" and sql.startswith("'", i + 1) and not after_word):
            escapes = backslash_quotes or c != "'"
            i += 1 if c == "'" else 2
            while i < n:
                if (escapes and sql[i] == "\\") or sql.startswith("''", i):
                    i += 2  # an escaped character, or a doubled quote
                elif sql[i] == "'":
                    i += 1
                    break
                else:
                    i += 1
        elif c == '"':
            end = i + 1
            while end < n and not (sql[end] == '"' and not sql.startswith('"', end + 1)):
                end += 2 if sql.startswith('""', end) else 1
            out.append(" " + sql[i + 1 : end] + " ")
            i = end + 1
            continue
        elif c == "$" and not after_word and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag[0], tag.end())
            i = n if end < 0 else end + len(tag[0])
        else:
            out.append(c)
            i += 1
            continue
        out.append(" ")
    return "".join(out)


def _code(
    lexer: re.Pattern[str], sql: str, identifier_quotes: str, executable_comments: bool
) -> str:
    """`sql` with literals and comments blanked out; quoted identifiers keep their text, so
    MySQL's SET `autocommit` is seen too."""

    def keep_code(match: re.Match[str]) -> str:
        text = match[0]
        if not match["skip"]:
            return text
        if executable_comments:
            executable = _EXECUTABLE_COMMENT.fullmatch(text)
            if executable:
                inner = _code(lexer, executable["code"], identifier_quotes, executable_comments)
                return f" {inner} "
        if text[:1] in identifier_quotes:
            return " " + text.strip(identifier_quotes + "]") + " "
        return " "

    return lexer.sub(keep_code, sql)
