"""How a client reaches the coordinator: TLS files and the client token (`ChannelConfig`).

The coordinator's side is in its settings (README, "Security"): with `tls_cert_file` it speaks
TLS only; with `tls_client_ca_file` it wants a client certificate (mutual TLS); with
`client_token` it wants the token in every Coordinator call. `ChannelConfig.from_env()` reads
the same from the environment, which is what `global_transaction()` and the admin CLI use when
they are given nothing:

    TWOSTEP_COORDINATOR_CA     PEM CA certificate(s) the coordinator's certificate is checked
                               against; set (or a client certificate set): TLS
    TWOSTEP_COORDINATOR_CERT   PEM client certificate (mutual TLS), with ...
    TWOSTEP_COORDINATOR_KEY    ... its PEM private key
    TWOSTEP_CLIENT_TOKEN       the client token, sent as 'authorization: Bearer TOKEN'
    TWOSTEP_CLIENT_TOKEN_FILE  a file holding it (the variable wins over the file)

The files are read when a channel is made (`open`), so a missing or unreadable one is a
`ConfigurationError` naming it then, before any call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import grpc

from ._errors import ConfigurationError

__all__ = ["ChannelConfig"]

_ENV_CA = "TWOSTEP_COORDINATOR_CA"
_ENV_CERT = "TWOSTEP_COORDINATOR_CERT"
_ENV_KEY = "TWOSTEP_COORDINATOR_KEY"
_ENV_TOKEN = "TWOSTEP_CLIENT_TOKEN"
_ENV_TOKEN_FILE = "TWOSTEP_CLIENT_TOKEN_FILE"


@dataclass(frozen=True)
class ChannelConfig:
    """TLS and credentials of a coordinator channel. All None: plain text, no credentials
    (a coordinator on loopback in development). Hashable: clients are kept per address and
    config. Raises `ValueError` for a certificate without its key or the other way round."""

    #: PEM CA certificate(s) to check the coordinator's certificate against; None with TLS
    #: on (a client certificate given): the system's trusted CAs.
    ca_file: Path | None = None
    #: PEM client certificate and its private key, for mutual TLS.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: The client token (or the admin token, for an admin), sent in every call.
    token: str | None = field(default=None, repr=False)

    #: Every variable `from_env` reads (a deployment's environment holds them beside the
    #: coordinator's settings for its health check).
    ENVIRONMENT: ClassVar[frozenset[str]] = frozenset(
        {_ENV_CA, _ENV_CERT, _ENV_KEY, _ENV_TOKEN, _ENV_TOKEN_FILE}
    )

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate (cert_file) needs its key (key_file)")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ValueError("the token must be non-empty, without spaces")

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChannelConfig:
        """The config the TWOSTEP_COORDINATOR_CA/_CERT/_KEY and TWOSTEP_CLIENT_TOKEN(_FILE)
        variables describe (see the module's doc). `ConfigurationError` if the token file
        cannot be read."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name, "").strip() else None

        token = env.get(_ENV_TOKEN, "").strip() or None
        token_file = path(_ENV_TOKEN_FILE)
        if token is None and token_file is not None:
            token = _read(token_file, _ENV_TOKEN_FILE).decode(errors="replace").strip() or None
        try:
            return cls(path(_ENV_CA), path(_ENV_CERT), path(_ENV_KEY), token)
        except ValueError as exc:
            raise ConfigurationError(f"{_ENV_CERT} / {_ENV_KEY}: {exc}") from None

    def open(self, address: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A new channel to `address` ("HOST:PORT"): TLS if configured, else plain text.
        `ConfigurationError` if a file cannot be read."""
        if not self.tls:
            return grpc.insecure_channel(address, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file") if self.ca_file else None,
            private_key=_read(self.key_file, "key_file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "cert_file") if self.cert_file else None,
        )
        return grpc.secure_channel(address, credentials, options=list(options))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the coordinator channel's {what} {path}: {exc.strerror}"
        ) from None
