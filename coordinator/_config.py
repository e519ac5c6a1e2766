"""The coordinator's settings: defaults, a TOML file, environment variables, command-line flags.

Precedence, highest first: flag > environment > file > default. The file is given with
`--config FILE` (or `TWOSTEP_CONFIG`); its `[coordinator]` table holds the settings (keys as in
`--help`, e.g. `listen = "0.0.0.0:50051"`, `max_timeout_s = 300`), its `[resources.NAME]`
tables the participant databases (`_registry`). Nothing else may be in the file: any other
table (a misspelled `[coordinatr]`, `[resource.orders]`), a key outside every table, and an
unknown key in `[coordinator]` is an error naming it, never ignored.
Invalid values raise `ConfigError` naming the setting and where it came from; `__main__` turns
that into a message and exit status 2. Secrets (the admin token, database passwords) are never
part of a message or a repr.

`describe_settings()` lists the settings as documented, the one source of `--help` and of
docs/config.md (`config_reference()`, printed by `--print-config-reference`). The parser's
`--health-check HOST:PORT` probes a running coordinator (`_health`) and exits instead of
loading anything.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import textwrap
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from twostep.client import ConfigurationError as ClientConfigurationError
from twostep.client import InvalidIdentifier
from twostep.client.tpc import LOCAL_CLUSTER, validate_cluster_id

from ._health import check_health
from ._registry import ResourceConfig, ResourceConfigError, parse_resources

__all__ = [
    "CONFIG_ENV",
    "ConfigError",
    "SettingDoc",
    "Settings",
    "build_parser",
    "config_reference",
    "describe_settings",
    "load_settings",
]

#: The environment variable naming the config file (the flag is `--config`).
CONFIG_ENV = "TWOSTEP_CONFIG"

_MAX_RETENTION_S = 366 * 86_400
#: A client asks again for a lost decision until its deadline + 10 s (`client._global`); a
#: finished transaction is kept at least max_timeout + this, so its decision outlives that.
_LATE_COMMIT_MARGIN_MS = 60_000
#: Settings with a flag whose refused value is not echoed: a URL may carry a password.
_MAY_HOLD_A_SECRET = frozenset({"log_database_url"})
#: The tables a config file may have; anything else in it is a mistake.
_TABLES = ("coordinator", "resources")


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it and its source."""


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator is configured with (times in milliseconds)."""

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("twostep-data")
    #: Where the decisions are kept: "sqlite" (embedded, in data_dir) or "postgresql" (a
    #: database replicas share: `log_database_url`, its password apart).
    log_store: str = "sqlite"
    log_database_url: str = ""
    log_database_password: str = field(default="", repr=False)
    log_database_password_file: Path | None = None
    #: Empty: the id the data directory holds, generated at its first start (`_datadir`).
    cluster_id: str = ""
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 300_000
    max_batch: int = 1000
    workers: int = 32
    log_level: str = "INFO"
    log_format: str = "logfmt"
    #: Empty: no metrics endpoint.
    metrics_listen: str = ""
    recovery_interval_ms: int = 5_000
    recovery_grace_ms: int = 10_000
    kill_grace_ms: int = 30_000
    kill_live_sessions: bool = True
    retention_ms: int = 6 * 3_600_000
    database_timeout_ms: int = 30_000
    shutdown_grace_ms: int = 10_000
    #: The admin token itself (file key or environment only, never a flag); empty: see
    #: `admin_token_file`, else a token generated into `data_dir/admin-token`.
    admin_token: str = field(default="", repr=False)
    admin_token_file: Path | None = None
    #: TLS on the gRPC port: the server's certificate chain and key (PEM), both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Set: mutual TLS, every caller presents a certificate signed by this CA (PEM).
    tls_client_ca_file: Path | None = None
    #: Client certificate names (subject CN or a SAN) that are admins (`_callers`).
    tls_admin_names: tuple[str, ...] = ()
    #: The token Coordinator calls may send instead of a client certificate (file key or
    #: environment only); empty: see `client_token_file`.
    client_token: str = field(default="", repr=False)
    client_token_file: Path | None = None
    #: Plain text or unauthenticated callers on a non-loopback address (`_callers`).
    allow_insecure: bool = False
    max_message_bytes: int = 16 * 1024 * 1024  # 1000 transactions of 64 branches fit
    max_connections: int = 1000  # gRPC connections at once (`_transport`)
    connection_idle_ms: int = 120_000  # a connection without calls this long is closed
    resources: tuple[ResourceConfig, ...] = ()


@dataclass(frozen=True)
class _Setting:
    name: str  # the field of Settings
    key: str  # its key in the file's [coordinator] table
    flag: str | None  # None: no flag (a secret must not show in the process list)
    env: str
    metavar: str
    help: str
    parse: Callable[[Any], Any]


@dataclass(frozen=True)
class SettingDoc:
    """One setting as documented: `describe_settings()` lists them in `--help` order."""

    name: str  #: the field of `Settings` (times in milliseconds)
    key: str  #: its key in the config file's [coordinator] table (times in seconds)
    flag: str | None  #: its command-line flag; None for a secret (never a flag)
    env: str  #: its environment variable
    metavar: str  #: what a value looks like, e.g. "SECONDS"
    default: str  #: the default as a user would write it (seconds, not milliseconds)
    help: str


def _listen(value: Any) -> str:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with PORT 0-65535 (0: any free port)")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("an IPv6 host goes in brackets, e.g. [::1]:50051")
    return text


def _listen_or_off(value: Any) -> str:
    """ "" or "off": off (returned as ""); else a `_listen` address."""
    if isinstance(value, str) and value.strip().lower() in {"", "off"}:
        return ""
    return _listen(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"expected {' or '.join(choices)}")
        return text

    return parse


def _cluster(value: Any) -> str:
    text = _text(value)
    try:
        validate_cluster_id(text)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None
    if text == LOCAL_CLUSTER:
        raise ValueError(f"{LOCAL_CLUSTER!r} is reserved for manual two-phase commit")
    return text


def _seconds_or_zero_as_ms(value: Any) -> int:
    rule = "expected a number of seconds from 0 to 86400"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(rule) from None
    if isinstance(value, bool) or not math.isfinite(seconds) or not 0 <= seconds <= 86_400:
        raise ValueError(rule)
    return round(seconds * 1000)


def _bounded_seconds_as_ms(high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        rule = f"expected a number of seconds, more than 0 and at most {high}"
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValueError(rule) from None
        if isinstance(value, bool) or not math.isfinite(seconds) or not 0 < seconds <= high:
            raise ValueError(rule)
        return max(1, round(seconds * 1000))

    return parse


_seconds_as_ms = _bounded_seconds_as_ms(86_400)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0"}:
        return False
    raise ValueError("expected true or false")


def _token(kind: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        # Never echo the value: the message names the rule only.
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a non-empty string") from None
        token = value.strip()
        if len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token):
            raise ValueError(f"{kind} token is at least 16 printable characters without spaces")
        return token

    return parse


def _names(value: Any) -> tuple[str, ...]:
    """A TOML list of strings, or one comma-separated string (environment, flag)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of names, or names separated by commas")
    names = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    if not names or any(not n.isprintable() for n in names):
        raise ValueError("expected at least one name of printable characters")
    return names


def _bounded_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        rule = f"expected a whole number from {low} to {high}"
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(rule)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(rule) from None
        if not low <= number <= high:
            raise ValueError(rule)
        return number

    return parse


def _log_level(value: Any) -> str:
    level = _text(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _path(value: Any) -> Path:
    return Path(_text(value))


def _log_store(value: Any) -> str:
    store = _text(value).lower()
    if store not in {"sqlite", "postgresql"}:
        raise ValueError("expected sqlite or postgresql")
    return store


def _database_url(value: Any) -> str:
    """A libpq connection URL or string naming host and database, without a password."""
    text = _text(value)
    try:
        parts = psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        raise ValueError("expected a PostgreSQL URL, e.g. postgresql://user@host:5432/db") from None
    if "password" in parts or "passfile" in parts:  # never echo it: the message names the rule
        raise ValueError("the password goes in log_database_password(_file), not in the URL")
    missing = [name for name in ("host", "dbname") if not parts.get(name)]
    if missing:
        raise ValueError(f"the URL names no {' and no '.join(missing)}")
    return text


def _secret(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string") from None
    return value


_SETTINGS = (
    _Setting(
        name="listen",
        key="listen",
        flag="--listen",
        env="TWOSTEP_LISTEN",
        metavar="HOST:PORT",
        help="address the gRPC server listens on; port 0 picks a free port (the start line "
        "names the one bound)",
        parse=_listen,
    ),
    _Setting(
        name="data_dir",
        key="data_dir",
        flag="--data-dir",
        env="TWOSTEP_DATA_DIR",
        metavar="DIR",
        help="directory of the decision log (decisions.sqlite3), created if missing",
        parse=_path,
    ),
    _Setting(
        name="log_store",
        key="log_store",
        flag="--log-store",
        env="TWOSTEP_LOG_STORE",
        metavar="sqlite|postgresql",
        help="where the decisions are kept: sqlite, the embedded log in the data directory "
        "(one coordinator); postgresql, a database several coordinator replicas share "
        "(log_database_url; needs cluster_id, the same for every replica)",
        parse=_log_store,
    ),
    _Setting(
        name="log_database_url",
        key="log_database_url",
        flag="--log-database-url",
        env="TWOSTEP_LOG_DATABASE_URL",
        metavar="URL",
        help="log_store postgresql: the database, as a libpq URL without the password "
        "(postgresql://USER@HOST:PORT/DB?sslmode=verify-full); its schema 'twostep' is "
        "created at first start",
        parse=_database_url,
    ),
    _Setting(
        name="log_database_password",
        key="log_database_password",
        flag=None,
        env="TWOSTEP_LOG_DATABASE_PASSWORD",
        metavar="PASSWORD",
        help="the log database's password itself, as an alternative to "
        "log_database_password_file; a file key or the environment only, never a flag",
        parse=_secret,
    ),
    _Setting(
        name="log_database_password_file",
        key="log_database_password_file",
        flag="--log-database-password-file",
        env="TWOSTEP_LOG_DATABASE_PASSWORD_FILE",
        metavar="FILE",
        help="file holding the log database's password (a trailing newline is dropped); "
        "neither this nor log_database_password: libpq's own ways (PGPASSWORD, ~/.pgpass)",
        parse=_path,
    ),
    _Setting(
        name="cluster_id",
        key="cluster_id",
        flag="--cluster-id",
        env="TWOSTEP_CLUSTER_ID",
        metavar="ID",
        help="this coordinator cluster's id, written into every gtrid: 1-16 of a-z, 0-9, '-'. "
        "Unset, the data directory's own id is used (DATA_DIR/cluster-id, generated once at "
        "its first start, so two deployments never share one by accident); an id that "
        "differs from the one the data directory holds is refused",
        parse=_cluster,
    ),
    _Setting(
        name="default_timeout_ms",
        key="default_timeout_s",
        flag="--default-timeout",
        env="TWOSTEP_DEFAULT_TIMEOUT",
        metavar="SECONDS",
        help="lifetime of a transaction whose Begin asks for none",
        parse=_seconds_as_ms,
    ),
    _Setting(
        name="max_timeout_ms",
        key="max_timeout_s",
        flag="--max-timeout",
        env="TWOSTEP_MAX_TIMEOUT",
        metavar="SECONDS",
        help="longest lifetime a Begin may ask for; longer requests are cut to it (deadlines "
        "are always computed by the coordinator's clock)",
        parse=_seconds_as_ms,
    ),
    _Setting(
        name="max_batch",
        key="max_batch",
        flag="--max-batch",
        env="TWOSTEP_MAX_BATCH",
        metavar="N",
        help="group commit: most items the decision log writes in one transaction (one fsync)",
        parse=_bounded_int(1, 100_000),
    ),
    _Setting(
        name="workers",
        key="workers",
        flag="--workers",
        env="TWOSTEP_WORKERS",
        metavar="N",
        help="gRPC worker threads, for the calls that read the log or the databases (admin "
        "calls, GetTransaction, ListTransactions); Begin, Commit, Abort, Ack and Describe are "
        "served on the event loop and hold none while a decision goes to disk",
        parse=_bounded_int(1, 1024),
    ),
    _Setting(
        name="log_level",
        key="log_level",
        flag="--log-level",
        env="TWOSTEP_LOG_LEVEL",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (logs go to stderr, see log_format)",
        parse=_log_level,
    ),
    _Setting(
        name="log_format",
        key="log_format",
        flag="--log-format",
        env="TWOSTEP_LOG_FORMAT",
        metavar="logfmt|json",
        help="logfmt: one key=value line per record; json: one JSON object per line (keys "
        "ts, level, logger, msg, then the record's own, e.g. gtrid on every line about a "
        "transaction)",
        parse=_choice("logfmt", "json"),
    ),
    _Setting(
        name="metrics_listen",
        key="metrics_listen",
        flag="--metrics-listen",
        env="TWOSTEP_METRICS_LISTEN",
        metavar="HOST:PORT|off",
        help="address of the Prometheus metrics endpoint (HTTP, GET /metrics; names in the "
        "README, 'Metrics and logs'); port 0 picks a free port (the start line names it). Off "
        "by default: a fixed port would keep a second coordinator on the host from starting, "
        "and nobody gets an HTTP port they did not ask for (the container image turns it on "
        "at 0.0.0.0:9464)",
        parse=_listen_or_off,
    ),
    _Setting(
        name="recovery_interval_ms",
        key="recovery_interval_s",
        flag="--recovery-interval",
        env="TWOSTEP_RECOVERY_INTERVAL",
        metavar="SECONDS",
        help="how often recovery runs a pass (one also runs at start): finish decided "
        "transactions, scan every resource for prepared branches, abort orphans",
        parse=_seconds_as_ms,
    ),
    _Setting(
        name="recovery_grace_ms",
        key="recovery_grace_s",
        flag="--recovery-grace",
        env="TWOSTEP_RECOVERY_GRACE",
        metavar="SECONDS",
        help="how long after a decision recovery leaves phase 2 to the client before "
        "finishing the branches itself",
        parse=_seconds_or_zero_as_ms,
    ),
    _Setting(
        name="kill_grace_ms",
        key="kill_grace_s",
        flag="--kill-grace",
        env="TWOSTEP_KILL_GRACE",
        metavar="SECONDS",
        help="MySQL/MariaDB: how long past a transaction's deadline a live session may keep "
        "a prepared branch attached before recovery KILLs that session to finish the branch",
        parse=_seconds_or_zero_as_ms,
    ),
    _Setting(
        name="kill_live_sessions",
        key="kill_live_sessions",
        flag="--kill-live-sessions",
        env="TWOSTEP_KILL_LIVE_SESSIONS",
        metavar="true|false",
        help="whether recovery may KILL such a session at all (false: the branch is reported "
        "blocked until the session ends)",
        parse=_boolean,
    ),
    _Setting(
        name="retention_ms",
        key="retention_s",
        flag="--retention",
        env="TWOSTEP_RETENTION",
        metavar="SECONDS",
        help="how long a finished transaction (decided, phase 2 done) stays in the decision "
        "log for GetTransaction and 'twostep show' before it is deleted; at least "
        "max_timeout + 60 s (a pruned COMMIT would answer a late duplicate Commit ABORTED)",
        parse=_bounded_seconds_as_ms(_MAX_RETENTION_S),
    ),
    _Setting(
        name="database_timeout_ms",
        key="database_timeout_s",
        flag="--database-timeout",
        env="TWOSTEP_DATABASE_TIMEOUT",
        metavar="SECONDS",
        help="how long any one read or write on a registered resource may wait for its "
        "database before the session is broken off (a resource's connect_timeout bounds "
        "connecting); recovery and Admin calls never wait for a resource longer than one "
        "recovery interval (at least 1 s) or their deadline, and report it stuck",
        parse=_seconds_as_ms,
    ),
    _Setting(
        name="shutdown_grace_ms",
        key="shutdown_grace_s",
        flag="--shutdown-grace",
        env="TWOSTEP_SHUTDOWN_GRACE",
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long calls in flight may take to finish; the process "
        "exits at most 5 s after that (or at a second signal) whatever still runs",
        parse=_seconds_as_ms,
    ),
    _Setting(
        name="admin_token",
        key="admin_token",
        flag=None,
        env="TWOSTEP_ADMIN_TOKEN",
        metavar="TOKEN",
        help="the token itself, as an alternative to admin_token_file; a file key or the "
        "environment only, never a flag (a flag shows in the process list)",
        parse=_token("an admin"),
    ),
    _Setting(
        name="admin_token_file",
        key="admin_token_file",
        flag="--admin-token-file",
        env="TWOSTEP_ADMIN_TOKEN_FILE",
        metavar="FILE",
        help="file holding the token that Admin calls must send as 'authorization: Bearer "
        "TOKEN'; without this and without admin_token (file key, or env TWOSTEP_ADMIN_TOKEN; "
        "never a flag) a token is generated at first start into DATA_DIR/admin-token "
        "(mode 0600) and the start line says where",
        parse=_path,
    ),
    _Setting(
        name="tls_cert_file",
        key="tls_cert_file",
        flag="--tls-cert-file",
        env="TWOSTEP_TLS_CERT_FILE",
        metavar="FILE",
        help="PEM certificate chain of the gRPC port: set with tls_key_file, the port speaks "
        "TLS only; checked at start (unreadable, not PEM, or not the key's: exit 2)",
        parse=_path,
    ),
    _Setting(
        name="tls_key_file",
        key="tls_key_file",
        flag="--tls-key-file",
        env="TWOSTEP_TLS_KEY_FILE",
        metavar="FILE",
        help="PEM private key of tls_cert_file (unencrypted; mode 0600)",
        parse=_path,
    ),
    _Setting(
        name="tls_client_ca_file",
        key="tls_client_ca_file",
        flag="--tls-client-ca-file",
        env="TWOSTEP_TLS_CLIENT_CA_FILE",
        metavar="FILE",
        help="PEM CA certificate(s) of the callers: set, TLS is mutual, a caller without a "
        "certificate signed by one of them is refused in the handshake, and every such "
        "certificate may make Coordinator calls (needs tls_cert_file)",
        parse=_path,
    ),
    _Setting(
        name="tls_admin_names",
        key="tls_admin_names",
        flag="--tls-admin-names",
        env="TWOSTEP_TLS_ADMIN_NAMES",
        metavar="NAME,...",
        help="client certificate names that are admins (Admin calls, ListTransactions): a "
        "certificate from tls_client_ca_file whose subject common name or any subject "
        "alternative name (DNS, URI, e-mail, IP) is one of these; a list in the file",
        parse=_names,
    ),
    _Setting(
        name="client_token",
        key="client_token",
        flag=None,
        env="TWOSTEP_CLIENT_TOKEN",
        metavar="TOKEN",
        help="the token itself, as an alternative to client_token_file; a file key or the "
        "environment only, never a flag",
        parse=_token("a client"),
    ),
    _Setting(
        name="client_token_file",
        key="client_token_file",
        flag="--client-token-file",
        env="TWOSTEP_CLIENT_TOKEN_FILE",
        metavar="FILE",
        help="file holding the client tokens, one per line, one of which Coordinator calls "
        "(Begin, Commit, Abort, Ack, GetTransaction, Describe) must send as 'authorization: "
        "Bearer TOKEN' unless they present a client certificate (mutual TLS); each token is "
        "one identity, and a client may act only on its own transactions; unset, together "
        "with client_token and tls_client_ca_file: every caller may make them (loopback or "
        "allow_insecure only)",
        parse=_path,
    ),
    _Setting(
        name="allow_insecure",
        key="allow_insecure",
        flag="--allow-insecure",
        env="TWOSTEP_ALLOW_INSECURE",
        metavar="true|false",
        help="listen on a non-loopback address without TLS, or without caller credentials "
        "(no client_token, no tls_client_ca_file); without it the coordinator refuses to "
        "start so (exit 2), with it every start logs a warning",
        parse=_boolean,
    ),
    _Setting(
        name="max_message_bytes",
        key="max_message_bytes",
        flag="--max-message-bytes",
        env="TWOSTEP_MAX_MESSAGE_BYTES",
        metavar="BYTES",
        help="largest request the gRPC port accepts; a larger one is answered "
        "RESOURCE_EXHAUSTED unread",
        parse=_bounded_int(1024, 1024 * 1024 * 1024),
    ),
    _Setting(
        name="max_connections",
        key="max_connections",
        flag="--max-connections",
        env="TWOSTEP_MAX_CONNECTIONS",
        metavar="N",
        help="most gRPC connections open at once; one more is closed at once (cut further if "
        "the descriptor limit, ulimit -n, cannot hold them, with a warning)",
        parse=_bounded_int(1, 1_000_000),
    ),
    _Setting(
        name="connection_idle_ms",
        key="connection_idle_s",
        flag="--connection-idle",
        env="TWOSTEP_CONNECTION_IDLE",
        metavar="SECONDS",
        help="a gRPC connection without a call for this long is closed (clients reconnect "
        "at their next call), so idle connections do not use up max_connections",
        parse=_seconds_as_ms,
    ),
)

_DISPLAY_DEFAULTS = {
    "default_timeout_ms": "30",
    "max_timeout_ms": "300",
    "data_dir": "./twostep-data",
    "metrics_listen": "off",
    "log_store": "sqlite",
    "log_database_url": "unset",
    "log_database_password": "unset (see log_database_password_file)",
    "log_database_password_file": "unset",
    "recovery_interval_ms": "5",
    "recovery_grace_ms": "10",
    "kill_grace_ms": "30",
    "kill_live_sessions": "true",
    "retention_ms": "21600 (6 hours)",
    "database_timeout_ms": "30",
    "shutdown_grace_ms": "10",
    "cluster_id": "DATA_DIR/cluster-id, generated",
    "admin_token": "unset (see admin_token_file)",
    "admin_token_file": "DATA_DIR/admin-token, generated",
    "tls_cert_file": "unset (plain text)",
    "tls_key_file": "unset",
    "tls_client_ca_file": "unset (no client certificates)",
    "tls_admin_names": "none",
    "client_token": "unset (see client_token_file)",
    "client_token_file": "unset",
    "allow_insecure": "false",
    "max_message_bytes": "16777216 (16 MiB)",
    "max_connections": "1000",
    "connection_idle_ms": "120",
}

_DESCRIPTION = (
    "The twostep coordinator: decides COMMIT or ABORT for global transactions across "
    "PostgreSQL and MySQL/MariaDB, keeps each decision in a durable log, and finishes "
    "every transaction it decided through its registered resources. "
    "Each setting is also read from the environment variable named in its help and "
    "from the [coordinator] table of the --config file; a flag beats the environment, "
    "which beats the file, which beats the default."
)

_EPILOG = """\
Participant databases ("resources") are tables of the --config file, one per name the
application's connections use:
  [resources.orders]
  driver = "postgresql"   # postgresql, postgres, mysql or mariadb
  host = "10.0.0.5"
  port = 5432
  database = "shop"
  username = "twostep"
  password_file = "/run/secrets/orders"   # or password_env = "VAR", or password = "..."
Optional: connect_timeout, pool_size, max_overflow, pool_timeout, options (as in the
client's connection config).
Recovery finishes branches only on registered resources; a branch on another is reported
blocked ("not registered", saying what to do) and retried, never dropped.
"""


def describe_settings() -> tuple[SettingDoc, ...]:
    """Every setting with its file key, flag, environment variable, default and help: the one
    source of `--help` and of the config reference (`config_reference`)."""
    defaults = Settings()
    return tuple(
        SettingDoc(
            name=s.name,
            key=s.key,
            flag=s.flag,
            env=s.env,
            metavar=s.metavar,
            default=str(_DISPLAY_DEFAULTS.get(s.name, getattr(defaults, s.name))),
            help=s.help,
        )
        for s in _SETTINGS
    )


def config_reference() -> str:
    """The settings reference in Markdown (docs/config.md is this text; a test compares)."""
    lines = [
        "# Coordinator settings",
        "",
        "<!-- Generated from coordinator/_config.py by",
        "     twostep-coordinator --print-config-reference > docs/config.md",
        "     A test fails when this file is out of date. -->",
        "",
        textwrap.fill(_DESCRIPTION, width=100),
        "",
        textwrap.fill(
            f"The config file is given with `--config FILE` or the environment variable "
            f"`{CONFIG_ENV}`; its `[coordinator]` table takes the keys below (times in seconds).",
            width=100,
        ),
        "",
    ]
    for doc in describe_settings():
        flag = f"`{doc.flag} {doc.metavar}`" if doc.flag else "none (a secret)"
        lines += [
            f"## `{doc.key}`",
            "",
            f"- flag: {flag}",
            f"- environment: `{doc.env}`",
            f"- default: {doc.default}",
            "",
            textwrap.fill(doc.help[0].upper() + doc.help[1:] + ".", width=100),
            "",
        ]
    lines += ["## Resources", "", "```", _EPILOG.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


class _PrintReference(argparse.Action):
    """`--print-config-reference`: print `config_reference()` and exit 0, like `--version`."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(config_reference(), end="")
        parser.exit(0)


class _HealthCheck(argparse.Action):
    """`--health-check ADDRESS`: probe a running coordinator and exit, like `--version`.

    Exit 0 and "SERVING" on stdout when it serves; 1 and the reason on stderr otherwise (a
    container runtime's healthy / unhealthy); 2 for a malformed ADDRESS (usage error).
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: object, values: Any, *_: object
    ) -> None:
        try:
            address = _listen(values)
        except ValueError as exc:
            parser.error(f"--health-check {values!r}: {exc}")
        try:
            status = check_health(address)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "ERROR"
            parser.exit(1, f"{parser.prog}: health check of {address}: {code}\n")
        except ClientConfigurationError as exc:
            parser.exit(1, f"{parser.prog}: health check of {address}: {exc}\n")
        print(status)
        parser.exit(0 if status == "SERVING" else 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostep-coordinator",
        description=textwrap.fill(_DESCRIPTION, width=88),
        argument_default=argparse.SUPPRESS,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file whose [coordinator] table holds any of the settings below under their "
        f"file keys [env {CONFIG_ENV}]",
    )
    for doc in describe_settings():
        if doc.flag is None:
            continue
        parser.add_argument(
            doc.flag,
            dest=doc.name,
            metavar=doc.metavar,
            help=f"{doc.help} [file key {doc.key}; env {doc.env}; default {doc.default}]",
        )
    parser.add_argument(
        "--health-check",
        metavar="HOST:PORT",
        action=_HealthCheck,
        help="do not start: ask the coordinator at HOST:PORT for its gRPC health status, "
        "print it and exit 0 if SERVING, else 1 (the container's health check)",
    )
    parser.add_argument(
        "--print-config-reference",
        nargs=0,
        action=_PrintReference,
        help="do not start: print every setting as Markdown (docs/config.md) and exit",
    )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, environment and file; `ConfigError` if any value is invalid.

    A malformed command line exits with status 2 through argparse, like any CLI.
    """
    environ = os.environ if environ is None else environ
    flags = vars(build_parser().parse_args(argv))
    raw: dict[str, tuple[Any, str]] = {}  # setting -> (value, where it came from)

    config_file = flags.pop("config", None) or environ.get(CONFIG_ENV)
    resources: tuple[ResourceConfig, ...] = ()
    if config_file:
        table, resource_tables = _read_file(Path(config_file))
        if resource_tables is not None:
            try:
                resources = parse_resources(
                    resource_tables,
                    source=str(config_file),
                    environ=environ,
                    base_dir=Path(config_file).parent,
                )
            except ResourceConfigError as exc:
                raise ConfigError(str(exc)) from None
        for setting in _SETTINGS:
            if setting.key in table:
                source = f"{config_file} [coordinator] {setting.key}"
                raw[setting.name] = (table[setting.key], source)
    for setting in _SETTINGS:
        if setting.env in environ:
            raw[setting.name] = (environ[setting.env], f"environment {setting.env}")
    for setting in _SETTINGS:
        if setting.name in flags:
            raw[setting.name] = (flags[setting.name], f"flag {setting.flag}")

    values: dict[str, Any] = {}
    for setting in _SETTINGS:
        if setting.name not in raw:
            continue
        value, source = raw[setting.name]
        try:
            values[setting.name] = setting.parse(value)
        except (TypeError, ValueError) as exc:
            hidden = setting.flag is None or setting.name in _MAY_HOLD_A_SECRET
            shown = "(hidden)" if hidden else repr(value)
            raise ConfigError(f"{source} = {shown}: {exc}") from None
    settings = Settings(**values, resources=resources)
    _check_tls(settings)
    _check_log_store(settings)
    if settings.default_timeout_ms > settings.max_timeout_ms:
        raise ConfigError(
            f"default timeout ({settings.default_timeout_ms / 1000:g} s) is longer than the "
            f"max timeout ({settings.max_timeout_ms / 1000:g} s)"
        )
    shortest = settings.max_timeout_ms + _LATE_COMMIT_MARGIN_MS
    if settings.retention_ms < shortest:
        raise ConfigError(
            f"retention ({settings.retention_ms / 1000:g} s) is shorter than the max timeout "
            f"+ {_LATE_COMMIT_MARGIN_MS // 1000} s ({shortest / 1000:g} s): a transaction "
            "pruned that early would answer a late duplicate Commit ABORTED"
        )
    return settings


def _check_tls(settings: Settings) -> None:
    """The TLS settings that only make sense together (the files are read by `_callers`)."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("tls_cert_file and tls_key_file are set together or not at all")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
    if settings.tls_admin_names and settings.tls_client_ca_file is None:
        raise ConfigError("tls_admin_names names client certificates: it needs tls_client_ca_file")


def _check_log_store(settings: Settings) -> None:
    """The decision log settings that only make sense together."""
    if settings.log_store == "sqlite":
        if settings.log_database_url:
            raise ConfigError("log_database_url is for log_store = postgresql")
        return
    if not settings.log_database_url:
        raise ConfigError("log_store = postgresql needs log_database_url")
    if not settings.cluster_id:
        raise ConfigError(
            "log_store = postgresql needs cluster_id: the replicas sharing the log share it"
        )
    if settings.log_database_password and settings.log_database_password_file:
        raise ConfigError("set log_database_password or log_database_password_file, not both")


def _read_file(path: Path) -> tuple[dict[str, Any], object | None]:
    """The file's [coordinator] table and its [resources] table (None if it has none)."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    strays = [_stray(key, value) for key, value in document.items() if key not in _TABLES]
    if strays:
        raise ConfigError(
            f"config file {path}: {'; '.join(strays)} (a config file holds only a "
            "[coordinator] table and [resources.NAME] tables)"
        )
    table = document.get("coordinator", {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: 'coordinator' must be a table")
    known = {setting.key for setting in _SETTINGS}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) in [coordinator]: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    return table, document.get("resources")


def _stray(key: str, value: object) -> str:
    """How an unknown top-level entry of a config file reads in an error message."""
    if not isinstance(value, dict):
        return f"unknown top-level key {key!r}: settings go in [coordinator]"
    hint = difflib.get_close_matches(key, _TABLES, n=1)
    named = [f"{key}.{sub}" for sub, v in value.items() if isinstance(v, dict)] or [key]
    shown = ", ".join(f"[{n}]" for n in named)
    return f"unknown table{'s' if len(named) > 1 else ''} {shown}" + (
        f", did you mean [{hint[0]}]?" if hint else ""
    )
