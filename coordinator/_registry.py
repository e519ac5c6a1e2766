"""The resource registry: the participant databases the coordinator can reach by itself.

Each `[resources.NAME]` table of the coordinator's TOML config names one database by the same
name the application's connection uses (the branches' resource), with the same fields as the
client's connection config (`twostep.client.Connection`):

    [resources.orders]
    driver = "postgresql"          # postgresql | postgres | mysql | mariadb
    host = "10.0.0.5"
    port = 5432
    database = "shop"
    username = "twostep"
    password_file = "/run/secrets/orders-db"   # or password_env = "ORDERS_DB_PASSWORD",
                                               # or password = "..." (discouraged)

plus the optional `connect_timeout`, `pool_size`, `max_overflow`, `pool_timeout` and `options`
of the client config (the pool's fields bound the sessions recovery and the admin service open
on the resource). Every session the coordinator opens gets the client's `io_timeout`
(`ResourceRegistry(io_timeout=)`, the `database_timeout` setting): with `connect_timeout`, no
call on a database that stops answering waits for longer than that, so a hung database never
holds a coordinator thread for good. At most one of `password`, `password_env` (the name of an
environment variable) and `password_file` (a file holding the password; a trailing newline is
dropped; a relative path is relative to the config file) may be given. SQLite cannot be a
resource: it never takes part in two-phase commit.

Secrets never leave this module except towards the driver: `ResourceConfig` and `Resource`
show only the name, dialect and `host:port/database`; every error names the resource and the
field, never a value; `Resource.redact()` masks the password in text that came from a driver
before it is logged or sent in a reply.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostep.client import ConfigurationError, Connection, InvalidIdentifier
from twostep.client.tpc import BranchOps, require_two_phase, validate_resource_name

__all__ = ["Resource", "ResourceConfig", "ResourceRegistry", "parse_resources"]

_CONNECTION_FIELDS = frozenset(
    {
        "driver",
        "host",
        "port",
        "database",
        "username",
        "connect_timeout",
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "options",
    }
)
_PASSWORD_FIELDS = ("password", "password_env", "password_file")
_TWO_PHASE_DRIVERS = {"postgresql": "postgresql", "postgres": "postgresql"} | {
    "mysql": "mysql",
    "mariadb": "mysql",
}


class ResourceConfigError(ValueError):
    """A `[resources.NAME]` table is invalid; the message names it and the field, no value."""


@dataclass(frozen=True)
class ResourceConfig:
    """One validated `[resources.NAME]` table, its password already read from its source."""

    name: str
    dialect: str  # "postgresql" or "mysql"
    target: str  # "host:port/database", never credentials
    #: The client connection config (password included); never shown.
    connection_config: Mapping[str, Any] = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return f"<ResourceConfig {self.name!r} {self.dialect} {self.target}>"


def parse_resources(
    tables: object,
    *,
    source: str,
    environ: Mapping[str, str],
    base_dir: Path,
) -> tuple[ResourceConfig, ...]:
    """The `[resources]` table of a config file as validated `ResourceConfig`s.

    Raises `ResourceConfigError` naming `source`, the resource and the field (never a value).
    """
    if not isinstance(tables, Mapping):
        raise ResourceConfigError(f"{source}: 'resources' must be a table of [resources.NAME]")
    configs = []
    for name, table in tables.items():
        where = f"{source} [resources.{name}]"
        try:
            validate_resource_name(name)
        except InvalidIdentifier as exc:
            raise ResourceConfigError(f"{source}: resource name: {exc}") from None
        if not isinstance(table, Mapping):
            raise ResourceConfigError(f"{where}: must be a table")
        configs.append(_parse_one(name, table, where, environ, base_dir))
    return tuple(configs)


def _parse_one(
    name: str, table: Mapping[str, Any], where: str, environ: Mapping[str, str], base_dir: Path
) -> ResourceConfig:
    unknown = sorted(str(k) for k in table if k not in _CONNECTION_FIELDS | set(_PASSWORD_FIELDS))
    if unknown:
        known = ", ".join(sorted(_CONNECTION_FIELDS | set(_PASSWORD_FIELDS)))
        raise ResourceConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)} (known: {known})"
        )
    driver = table.get("driver")
    dialect = _TWO_PHASE_DRIVERS.get(driver.lower()) if isinstance(driver, str) else None
    if dialect is None:
        raise ResourceConfigError(
            f"{where}: field 'driver' must be one of {', '.join(sorted(_TWO_PHASE_DRIVERS))} "
            "(a resource takes part in two-phase commit; SQLite cannot)"
        )
    config = {k: v for k, v in table.items() if k in _CONNECTION_FIELDS}
    config["password"] = _password(table, where, environ, base_dir)
    try:
        # Validates every field the way the client does (its errors never quote values);
        # opens nothing.
        connection = Connection.from_config(name, config)
    except ConfigurationError as exc:
        raise ResourceConfigError(f"{where}: {exc}") from None
    s = connection.settings
    target = f"{s.host}:{s.port or connection.dialect.default_port}/{s.database}"
    return ResourceConfig(name, dialect, target, config)


def _password(
    table: Mapping[str, Any], where: str, environ: Mapping[str, str], base_dir: Path
) -> str:
    given = [f for f in _PASSWORD_FIELDS if f in table]
    if len(given) > 1:
        raise ResourceConfigError(
            f"{where}: give at most one of {', '.join(_PASSWORD_FIELDS)} (found {', '.join(given)})"
        )
    if not given:
        return ""
    kind = given[0]
    value = table[kind]
    if not isinstance(value, str):
        raise ResourceConfigError(f"{where}: field {kind!r} must be a string")
    if kind == "password":
        return value
    if kind == "password_env":
        if value not in environ:
            raise ResourceConfigError(
                f"{where}: password_env names the environment variable {value!r}, which is not set"
            )
        return environ[value]
    path = Path(value)
    if not path.is_absolute():
        path = base_dir / path
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResourceConfigError(
            f"{where}: cannot read password_file {path}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ResourceConfigError(f"{where}: password_file {path} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


#: Seconds each read and write on a resource may wait by default (`database_timeout`).
DEFAULT_IO_TIMEOUT_S = 30.0


class Resource:
    """A registered database: its pooled sessions, its branch operations, its target."""

    def __init__(self, config: ResourceConfig, *, io_timeout: float = DEFAULT_IO_TIMEOUT_S):
        self.name = config.name
        self.dialect = config.dialect
        self.target = config.target
        bounded = {**config.connection_config, "io_timeout": io_timeout}
        self.connection = Connection.from_config(config.name, bounded)
        self.ops: BranchOps = require_two_phase(self.dialect, connection=self.name)
        self._secret = str(config.connection_config.get("password") or "")

    def __repr__(self) -> str:
        return f"<Resource {self.name!r} {self.dialect} {self.target}>"

    def redact(self, text: object) -> str:
        """`text` (typically a driver's error message) with the password masked."""
        shown = str(text)
        if self._secret:
            shown = shown.replace(self._secret, "***")
        return shown

    def close(self) -> None:
        self.connection.close_idle()


class ResourceRegistry:
    """The registered resources by name; built once at start, read from any thread."""

    def __init__(
        self, configs: tuple[ResourceConfig, ...] = (), *, io_timeout: float = DEFAULT_IO_TIMEOUT_S
    ):
        """`io_timeout`: seconds each read and write on a resource's sessions may wait."""
        self._resources = {c.name: Resource(c, io_timeout=io_timeout) for c in configs}

    def __repr__(self) -> str:
        return f"<ResourceRegistry {sorted(self._resources)}>"

    def get(self, name: str) -> Resource | None:
        return self._resources.get(name)

    def names(self) -> list[str]:
        return sorted(self._resources)

    def __iter__(self) -> Iterator[Resource]:
        return iter([self._resources[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._resources)

    def redact(self, text: object) -> str:
        """`text` with every resource's password masked."""
        shown = str(text)
        for resource in self._resources.values():
            shown = resource.redact(shown)
        return shown

    def close(self) -> None:
        """Close the idle pooled sessions (sessions in use close when released)."""
        for resource in self._resources.values():
            resource.close()
