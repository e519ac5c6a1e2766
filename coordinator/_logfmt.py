"""Structured logs: one `key=value` line per record on stderr (logfmt).

`log.info("coordinator started", extra={"listen": addr})` prints
`ts=2025-01-01T12:00:00.123Z level=INFO logger=twostep.coordinator msg="coordinator started"
listen=127.0.0.1:50051`. Values with spaces, quotes or `=` are double-quoted with escapes;
an exception's traceback follows as `exc="..."` on the same line. No control character is
ever written as it is (a CR, an ESC or a BEL in a value could rewrite or fake a line on an
operator's terminal): inside quotes, `\\n`, `\\r`, `\\t`, else Python's `\\xNN` / `\\uNNNN`
escape, as for every character that is not printable.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["LogfmtFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def _value(value: object) -> str:
    text = str(value)
    if text.isprintable():
        if text and not any(c in text for c in ' "=\\'):
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "".join(map(_escaped, text)) + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"msg={_value(record.getMessage())}",
        ]
        parts.extend(
            f"{key}={_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(level: str) -> None:
    """Send every twostep logger's records to stderr as logfmt lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
