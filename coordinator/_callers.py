"""Who may call what: TLS on the gRPC port, caller credentials, and the audit of admin calls.

Three roles, each including the ones below it:
- *admin*: sends the admin token (`authorization: Bearer <admin token>`), or presents a client
  certificate (mutual TLS) whose subject common name or a subject alternative name is one of
  `tls_admin_names`. May make every call.
- *client*: sends a client token (`client_token`, or one of the lines of `client_token_file`),
  or presents any client certificate signed by `tls_client_ca_file` (the TLS handshake refuses
  the others). When neither is configured every caller is a client, unauthenticated: the
  coordinator then listens on loopback only, or with `allow_insecure` and a warning at every
  start.
- *anonymous*: anyone else.

Each client is also an *identity*: its token (each line of the token file is one), or the
names its certificate is known by (grpc's peer identity: the subject alternative names, else
the common name); in the open mode every caller is one identity. A gtrid carries the owner tag
of the identity that made it (`Caller.owner`, given out by Describe and written by Begin), and
`Caller.may_act_on` is the rule of who may act on it (docs/design.md §2, "Who may act on a
gtrid").

The Coordinator service is for clients, but ListTransactions (it lists every transaction, the
ACTIVE ones of other clients included) and the whole Admin service are for admins; health and
reflection are open (a container's health check, tooling). `CallerCheck`, a server interceptor,
applies this before any handler runs: a missing or unknown credential is answered
UNAUTHENTICATED, a valid credential of too small a role PERMISSION_DENIED, and in both cases
the handler never runs, so nothing changes. A token that was sent but is not one of ours is
refused even when a certificate would do: a wrong credential is never ignored.

The request is decoded only after the caller passed that check (`_decoding`): an anonymous
peer never reaches protobuf decoding (under mutual TLS it never gets past the handshake). A
request that does not decode is answered INVALID_ARGUMENT, and logged once a minute per peer
host, not once per call; the open services' requests are decoded the same way.

Every call that needs the admin role is written to the audit trail, the log
`twostep.coordinator.audit`, at INFO (allowed: the RPC, who by which credential, the peer, the
status it ended with) or WARNING (refused); refused client calls are logged there too. Refusals
are logged once a minute per peer host (`_peer_log`: the next line says how many were not), so
a peer hammering the port cannot fill the disk with them. Handlers
see who is calling through `current_caller()` (e.g. Resolve keeps it in the decision's note).

Tokens are compared in constant time (digests of equal length) and never logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import hashlib
import hmac
import inspect
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from twostep.client.tpc import GtridInfo, owner_tag
from twostep.v1 import coordinator_pb2 as _pb

from ._config import ConfigError, Settings
from ._decoding import Refused, RequestDecoder
from ._peer_log import PeerLog

__all__ = [
    "Caller",
    "CallerCheck",
    "Role",
    "check_exposure",
    "current_caller",
    "load_client_tokens",
    "read_token_file",
    "read_tokens",
    "server_credentials",
]

audit = logging.getLogger("twostep.coordinator.audit")
log = logging.getLogger("twostep.coordinator")

_COORDINATOR = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
_OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
#: Coordinator methods only admins may call: ListTransactions shows other clients' gtrids.
_ADMIN_ONLY = frozenset({f"/{_COORDINATOR}/ListTransactions"})
MIN_TOKEN_CHARS = 16
#: The auth-context properties that name a verified peer certificate (grpc core's names).
_CERT_NAME_KEYS = (
    "x509_common_name",
    "x509_subject_alternative_name",
    "peer_dns",
    "peer_uri",
    "peer_email",
    "peer_ip",
)


class Role(enum.IntEnum):
    ANONYMOUS = 0
    CLIENT = 1
    ADMIN = 2


@dataclass(frozen=True)
class Caller:
    """Who is calling: their role, how they proved it (for logs; never a secret), and the
    gtrids they may act on."""

    role: Role
    name: str  #: e.g. "admin token", "certificate CN=ops", "unauthenticated"
    authenticated: bool  #: False for anonymous and for everyone in the open (dev) mode
    #: The owner tag (`owner_tag` of the caller's identity in this cluster) of the gtrids the
    #: caller makes; "" for anonymous callers, who own nothing.
    owner: str = ""
    #: May act on every gtrid: an admin, or anyone when the coordinator has one identity
    #: (the open mode: no client credential configured).
    any_owner: bool = False

    def may_act_on(self, gtrid: GtridInfo) -> bool:
        """Who may act on a gtrid (docs/design.md §2), in its one place: the identity whose
        owner tag the gtrid carries, and admins. The tag is part of the gtrid, fixed by whoever
        made it (the owner from Describe's answer, or Begin for its caller) before any branch
        was prepared under it: a message of another identity cannot change whose it is, and a
        gtrid with another tag names other branches. A gtrid made before owner tags has none:
        only an admin (or anyone in the open mode) may act on it."""
        return self.any_owner or (bool(self.owner) and gtrid.owner == self.owner)


_UNKNOWN = Caller(Role.ANONYMOUS, "unknown", False)
_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("twostep_caller")


def current_caller() -> Caller:
    """The caller of the RPC being served in this context: the worker thread's call, or the
    event loop's task (set by `CallerCheck`)."""
    return _current.get(_UNKNOWN)


# -- tokens ------------------------------------------------------------------------------------


def read_tokens(path: Path, setting: str) -> tuple[str, ...]:
    """The tokens in `path`, one per line (blank lines skipped). Raises `FileNotFoundError` if
    there is no such file and `ConfigError` (naming `setting`) if it cannot be read, holds no
    token, a line is not a usable token, or a token is there twice; warns when users other
    than its owner and group may read it, or its group may change it."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read the {setting} {path}: {why}") from None
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip())
    for token in tokens or ("",):
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError(
                f"{setting} {path}: a token must be at least {MIN_TOKEN_CHARS} printable "
                "characters without spaces, one per line"
            )
    if len(set(tokens)) < len(tokens):
        raise ConfigError(f"{setting} {path}: a token is there twice")
    # Group read is allowed: Kubernetes mounts Secret files 0440 for the pod's fsGroup.
    if mode & 0o027:
        log.warning(
            f"the {setting} may be read or changed by other users; chmod 600 (or 640) it",
            extra={setting: path, "mode": oct(mode & 0o777)},
        )
    return tokens


def read_token_file(path: Path, setting: str) -> str:
    """The one token in `path`, as `read_tokens` reads it; `ConfigError` if there are more."""
    tokens = read_tokens(path, setting)
    if len(tokens) > 1:
        raise ConfigError(f"{setting} {path}: one token, on one line")
    return tokens[0]


def load_client_tokens(settings: Settings) -> tuple[str, ...]:
    """The client tokens: `client_token`, else the lines of `client_token_file` (each one
    client identity); empty if neither is set. Raises `ConfigError` for a missing or unusable
    file."""
    if settings.client_token:
        return (settings.client_token,)
    if settings.client_token_file is None:
        return ()
    try:
        return read_tokens(settings.client_token_file, "client_token_file")
    except FileNotFoundError:
        raise ConfigError(
            f"client_token_file {settings.client_token_file} does not exist"
        ) from None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


# -- TLS ---------------------------------------------------------------------------------------


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials (None: plain text), mutual when `tls_client_ca_file` is
    set. Reads and checks every file first: `ConfigError` naming the setting and the file if
    one is missing, unreadable, not PEM, or the key is not the certificate's."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read_pem(settings.tls_cert_file, "tls_cert_file")
    key = _read_pem(settings.tls_key_file, "tls_key_file")
    # grpc accepts any bytes here and fails only in each handshake: check with OpenSSL first.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert_file {settings.tls_cert_file} and tls_key_file {settings.tls_key_file}: "
            f"not a certificate chain and its private key ({exc.reason or exc})"
        ) from None
    ca = None
    if settings.tls_client_ca_file is not None:
        ca = _read_pem(settings.tls_client_ca_file, "tls_client_ca_file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=ca.decode())
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"tls_client_ca_file {settings.tls_client_ca_file}: not PEM CA certificates "
                f"({getattr(exc, 'reason', None) or exc})"
            ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _read_pem(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting} {path} is not PEM (no '-----BEGIN' line)")
    return data


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address is reachable from this host only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to any interface


def check_exposure(settings: Settings, *, callers_authenticated: bool) -> list[str]:
    """Warnings about who can reach the coordinator; `ConfigError` when it would listen on a
    non-loopback address in plain text, or without caller credentials, and `allow_insecure`
    is off."""
    problems = []
    if settings.tls_cert_file is None:
        problems.append("without TLS (tokens and decisions cross the network in plain text)")
    if not callers_authenticated:
        problems.append(
            "without caller credentials (no client_token, no tls_client_ca_file: anyone who "
            "can reach the port may commit or abort any transaction)"
        )
    if not problems:
        return []
    if is_loopback(settings.listen):
        if callers_authenticated:
            return []
        return [
            "callers are not authenticated: any process on this host may commit or abort any "
            "transaction (development mode; see the README's Security section)"
        ]
    if not settings.allow_insecure:
        raise ConfigError(
            f"refusing to listen on {settings.listen} {' and '.join(problems)}: set "
            "tls_cert_file/tls_key_file and client_token or tls_client_ca_file (README, "
            "'Security'), listen on a loopback address, or set allow_insecure = true"
        )
    return [f"INSECURE (allow_insecure): listening on {settings.listen} {' and '.join(problems)}"]


# -- the check on every call -------------------------------------------------------------------


class _Recorded:
    """The servicer context a handler sees, remembering the status the handler set (the
    asyncio server's context for synchronous handlers cannot tell it afterwards)."""

    def __init__(self, context: grpc.ServicerContext):
        self._context = context
        self.status: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> Any:
        """The context's abort: raises (a synchronous handler's context), or returns the
        coroutine to await (a coroutine handler's)."""
        self.status = code
        return self._context.abort(code, details, *args)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code
        self._context.set_code(code)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class CallerCheck(grpc.aio.ServerInterceptor):
    """Identifies the caller of every RPC, refuses what their role may not call, and only then
    decodes the request."""

    def __init__(
        self,
        *,
        cluster_id: str,
        admin_token: str,
        client_tokens: Sequence[str],
        mutual_tls: bool,
        admin_names: Sequence[str],
    ):
        self._admin_digest = _digest(admin_token)
        self._client_digests = tuple(_digest(token) for token in client_tokens)
        self._mutual_tls = mutual_tls
        self._admin_names = frozenset(admin_names)
        #: No client credential configured: every caller is a client (loopback / insecure),
        #: and all of them one identity.
        self._open = not client_tokens and not mutual_tls
        self._decoder = RequestDecoder()
        self._refused = PeerLog(audit, "call refused")
        #: Per method: the handler grpc gave and its wrapper, built once, not on every call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}
        #: Owner tags by identity (a SHA-256 each): the configured tokens' and the client
        #: certificates' identities, a few; bounded all the same.
        self._owner = functools.lru_cache(maxsize=1024)(functools.partial(owner_tag, cluster_id))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)  # registered methods only: a bounded map
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler | None:
        """`handler` of `method` behind the caller check (the same for every call of it)."""
        service = method.split("/")[1] if method.count("/") == 2 else ""
        if service in _OPEN_SERVICES:
            return self._decoder.open_handler(handler, method.rpartition("/")[2])
        # Default deny: anything but the Coordinator's client methods needs an admin.
        client_call = service == _COORDINATOR and method not in _ADMIN_ONLY
        needs = Role.CLIENT if client_call else Role.ADMIN
        behavior = handler.unary_unary
        if behavior is None:  # our services have unary methods only
            return None
        decode = handler.request_deserializer
        assert decode is not None  # generated handlers always have one
        return grpc.unary_unary_rpc_method_handler(
            self._checked(behavior, decode, method.rpartition("/")[2], needs),
            request_deserializer=None,  # the bytes as they came: decoded once the caller passed
            response_serializer=handler.response_serializer,
        )

    def _checked(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        decode: Callable[[bytes], Any],
        rpc: str,
        needs: Role,
    ) -> Callable[[bytes, grpc.ServicerContext], Any]:
        """`behavior` behind the check: a coroutine handler stays one (it runs on the event
        loop: the context's `abort` is awaited), a synchronous one stays synchronous (it runs
        on a worker thread: its context's `abort` raises)."""
        if inspect.iscoroutinefunction(behavior):

            async def call_on_loop(raw: bytes, grpc_context: grpc.ServicerContext) -> Any:
                context = _Recorded(grpc_context)
                try:
                    caller, request = self._admitted(context, raw, decode, rpc, needs)
                except Refused as refused:
                    await context.abort(refused.code, refused.details)
                    raise AssertionError("unreachable: context.abort raises") from None
                with self._serving(context, caller, rpc, needs):
                    return await behavior(request, context)

            return call_on_loop

        def call(raw: bytes, grpc_context: grpc.ServicerContext) -> Any:
            context = _Recorded(grpc_context)
            try:
                caller, request = self._admitted(context, raw, decode, rpc, needs)
            except Refused as refused:
                context.abort(refused.code, refused.details)
                raise AssertionError("unreachable: context.abort raises") from None
            with self._serving(context, caller, rpc, needs):
                return behavior(request, context)

        return call

    def _admitted(
        self,
        context: _Recorded,
        raw: bytes,
        decode: Callable[[bytes], Any],
        rpc: str,
        needs: Role,
    ) -> tuple[Caller, Any]:
        """The caller and the decoded request of a call they may make; `Refused` otherwise."""
        caller = self.identify(context)
        if caller.role < needs:
            raise self._refusal(context, caller, rpc, needs)
        return caller, self._decoder.decode(decode, raw, context, rpc, caller.name)

    @contextlib.contextmanager
    def _serving(self, context: _Recorded, caller: Caller, rpc: str, needs: Role) -> Iterator[None]:
        """The handler's run: `current_caller()` is `caller`, and an admin call is audited
        with the status it ended with."""
        token = _current.set(caller)
        try:
            yield
        except BaseException:
            if needs is Role.ADMIN:
                self._audit(context, caller, rpc, failed=True)
            raise
        finally:
            _current.reset(token)
        if needs is Role.ADMIN:
            self._audit(context, caller, rpc, failed=False)

    def identify(self, context: grpc.ServicerContext) -> Caller:
        """The caller of this call, from its token and its verified certificate: of the two,
        the credential that gives the higher role (the token when equal) names the identity."""
        by_token, token_identity = self._token_role(context.invocation_metadata() or ())
        if by_token is Role.ANONYMOUS:
            return Caller(Role.ANONYMOUS, "wrong token", False)
        by_cert, cert_name, cert_identity = self._cert_role(context)
        if by_token is None and by_cert is None:
            if self._open:
                return Caller(
                    Role.CLIENT, "unauthenticated", False, self._owner("open"), any_owner=True
                )
            return Caller(Role.ANONYMOUS, "no credentials", False)
        token_role = by_token or Role.ANONYMOUS
        cert_role = by_cert or Role.ANONYMOUS
        if token_role >= cert_role:
            role, name, identity = token_role, f"{token_role.name.lower()} token", token_identity
        else:
            role, name, identity = cert_role, cert_name, cert_identity
        return Caller(role, name, True, self._owner(identity), any_owner=role is Role.ADMIN)

    def _token_role(self, metadata: Sequence[tuple[str, Any]]) -> tuple[Role | None, str]:
        """The best role a sent token gives and the identity it names (`token:` and the
        token's SHA-256, never the token); None if none was sent, ANONYMOUS if every token
        sent is wrong."""
        sent = [v for k, v in metadata if k == "authorization"]
        if not sent:
            return None, ""
        best, identity = Role.ANONYMOUS, ""
        for value in sent:
            if not isinstance(value, str):
                continue
            scheme, _, presented = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                continue
            digest = _digest(presented.strip())
            if hmac.compare_digest(digest, self._admin_digest):
                best, identity = Role.ADMIN, "admin token"
            elif best < Role.CLIENT:
                # Every configured token is compared, so the time taken says nothing of which.
                matches = [hmac.compare_digest(digest, known) for known in self._client_digests]
                if any(matches):
                    best, identity = Role.CLIENT, f"token:{digest.hex()}"
        return best, identity

    def _cert_role(self, context: grpc.ServicerContext) -> tuple[Role | None, str, str]:
        """The role a verified client certificate gives (None without one), its name for the
        logs and the identity it names (`cert:` and grpc's peer identities: the subject
        alternative names, else the common name)."""
        if not self._mutual_tls:
            return None, "", ""
        properties = context.auth_context()
        if properties.get("transport_security_type") != [b"ssl"]:
            return None, "", ""
        names = {
            raw.decode(errors="replace")
            for key in _CERT_NAME_KEYS
            for raw in properties.get(key, ())
        }
        if not names:  # a handshake without a client certificate cannot succeed under mTLS
            return None, "", ""
        common = [v.decode(errors="replace") for v in properties.get("x509_common_name", ())]
        shown = f"certificate CN={common[0]}" if common else f"certificate {sorted(names)[0]}"
        peer = sorted(raw.decode(errors="replace") for raw in context.peer_identities() or ())
        identity = "cert:" + "\n".join(peer or sorted(names))
        return (Role.ADMIN if names & self._admin_names else Role.CLIENT), shown, identity

    def _refusal(self, context: Any, caller: Caller, rpc: str, needs: Role) -> Refused:
        """Why `caller` may not make this call (logged once a minute per peer host)."""
        self._refused.warning(context.peer(), rpc=rpc, caller=caller.name, needs=needs.name.lower())
        if caller.authenticated:
            return Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{rpc} is for admins: send the admin token as 'authorization: Bearer <token>' "
                "or use a client certificate named in the coordinator's tls_admin_names",
            )
        if needs is Role.ADMIN:
            return Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "Admin calls need the admin token as 'authorization: Bearer <token>' metadata, "
                "or a client certificate named in tls_admin_names"
                + (
                    " (the token sent is not the admin token)"
                    if caller.name == "wrong token"
                    else ""
                ),
            )
        return Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "this coordinator needs credentials: a client certificate (mutual TLS) or the "
            "client token as 'authorization: Bearer <token>'"
            + (" (the token sent is not one it accepts)" if caller.name == "wrong token" else ""),
        )

    @staticmethod
    def _audit(context: _Recorded, caller: Caller, rpc: str, *, failed: bool) -> None:
        code = context.status
        status = code.name if code is not None else ("ERROR" if failed else "OK")
        audit.info(
            "admin call",
            extra={"rpc": rpc, "caller": caller.name, "peer": context.peer(), "status": status},
        )
