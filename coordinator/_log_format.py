"""Structured logs on stderr, one line per record: logfmt (the default) or JSON.

`log.info("coordinator started", extra={"listen": addr})` prints, as logfmt,
`ts=2025-01-01T12:00:00.123Z level=INFO logger=twostep.coordinator msg="coordinator started"
listen=127.0.0.1:50051`: values with spaces, quotes or `=` are double-quoted with escapes.
No control character is ever written as it is (a CR, an ESC or a BEL in a value could
rewrite or fake a line on an operator's terminal): `\\n`, `\\r`, `\\t`, else `\\xNN` /
`\\uNNNN` in logfmt, JSON's `\\uNNNN` in JSON.
As JSON (`log_format = "json"`) the same keys in the same order make one object per line,
`{"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", ..., "listen": "127.0.0.1:50051"}`;
numbers and booleans stay JSON numbers and booleans, anything else is its `str()`. Either
way an exception's traceback follows as `exc`. Every line about a transaction has its
`gtrid` (the callers pass it in `extra`).
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "LogfmtFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, object]:
    """The record as the keys and values of a line, in line order."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    fields: dict[str, object] = {
        "ts": f"{ts}.{int(record.msecs):03d}Z",
        "level": record.levelname,
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(
        (key, value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    )
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text.isprintable():
        if text and not any(c in text for c in ' "=\\'):
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "".join(map(_escaped, text)) + '"'


def _json_value(value: object) -> object:
    return value if isinstance(value, bool | int | float) or value is None else str(value)


def _json_escaped(char: str) -> str:
    return char if char.isprintable() else json.dumps(char)[1:-1]


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {key: _json_value(value) for key, value in _fields(self, record).items()}
        line = json.dumps(fields, ensure_ascii=False)
        # json leaves C1 controls and other unprintable characters raw: \uXXXX them too.
        return line if line.isprintable() else "".join(map(_json_escaped, line))


_FORMATTERS: dict[str, type[logging.Formatter]] = {
    "logfmt": LogfmtFormatter,
    "json": JsonFormatter,
}


def configure_logging(level: str, log_format: str = "logfmt") -> None:
    """Send every twostep logger's records to stderr as `log_format` lines (logfmt, json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FORMATTERS[log_format]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
