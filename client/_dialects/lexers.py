"""How `?` placeholders become each driver's: one lexer per dialect and the translation.

Placeholders: `?` outside string literals, quoted identifiers and comments is a parameter; a
`?` inside them stays as written. psycopg and PyMySQL read `%` as the start of their own
placeholders, so every literal `%` is doubled for them. PostgreSQL's jsonb operators `?`, `?|`
and `?&` therefore cannot be written in twostep SQL: use `jsonb_exists()`,
`jsonb_exists_any()` and `jsonb_exists_all()`.

MySQL reads a backslash in a string as an escape unless the session's sql_mode has
NO_BACKSLASH_ESCAPES: `MYSQL_LEXER` and `MYSQL_NO_BACKSLASH_LEXER` are its two readings, and the
MySQL dialect picks the one of the session a statement runs on (`MySQL.lexer_for`).

The same lexers split a text into statements for `_statements.classify`.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "MYSQL_LEXER",
    "MYSQL_NO_BACKSLASH_LEXER",
    "POSTGRESQL_LEXER",
    "SQLITE_LEXER",
    "translate",
]

# Each lexer matches, in order: a span that is not SQL code (string literal, quoted identifier,
# comment), a `?`, a `%`. Unterminated spans run to the end so that the database, not twostep,
# reports the syntax error.
POSTGRESQL_LEXER = re.compile(
    r"""
    (?P<skip>
        (?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'?           # E'...': backslash escapes
      | '(?:[^']|'')*'?                                # '...'
      | "(?:[^"]|"")*"?                                # "identifier"
      | --[^\n]*                                       # -- comment
      | /\*.*?(?:\*/|\Z)                               # /* comment */
      | (?<![\w$])\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z)   # $tag$...$tag$
    )
    | (?P<param>\?)
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)


def _mysql_lexer(backslash_escapes: bool) -> re.Pattern[str]:
    # With backslash escapes, `\'` does not end a string; without, a backslash is a character.
    single, double = (r"[^'\\]|\\.", r'[^"\\]|\\.') if backslash_escapes else ("[^']", '[^"]')
    return re.compile(
        rf"""
        (?P<skip>
            '(?:{single}|'')*'?                            # '...'
          | "(?:{double}|"")*"?                            # "..." (a string in MySQL)
          | `(?:[^`]|``)*`?                                # `identifier`
          | (?:\#|--(?=\s|\Z))[^\n]*                       # # comment, -- comment
          | /\*.*?(?:\*/|\Z)                               # /* comment */
        )
        | (?P<param>\?)
        | (?P<percent>%)
        """,
        re.VERBOSE | re.DOTALL,
    )


MYSQL_LEXER = _mysql_lexer(backslash_escapes=True)  # the default sql_mode
MYSQL_NO_BACKSLASH_LEXER = _mysql_lexer(backslash_escapes=False)

SQLITE_LEXER = re.compile(
    r"""
    (?P<skip>
        '(?:[^']|'')*'?
      | "(?:[^"]|"")*"?
      | `(?:[^`]|``)*`?
      | \[[^\]]*\]?                                    # [identifier]
      | --[^\n]*
      | /\*.*?(?:\*/|\Z)
    )
    | (?P<param>\?)
    """,
    re.VERBOSE | re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def translate(lexer: re.Pattern[str], sql: str, to_format: bool) -> tuple[str, int]:
    """(driver SQL, number of `?` parameters); `to_format`: `?` -> `%s` and `%` -> `%%`."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match["param"]:
            count += 1
            return "%s" if to_format else "?"
        text = match[0]
        return text.replace("%", "%%") if to_format else text

    return lexer.sub(replace, sql), count
