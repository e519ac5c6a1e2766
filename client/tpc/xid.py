"""Transaction identifiers: the one module that encodes, validates and parses them.

A twostep gtrid reads `ts1.<cluster>.<deadline>.<owner>.<random>` when a coordinator's Begin
handed it out, `ts2.` the same when a client made it itself under the coordinator's
description (its cluster id, its maximum lifetime, its clock and the caller's owner tag;
docs/design.md §2): the cluster id keeps two twostep clusters (or other XA users) on one
database apart, the deadline (unix seconds, base 36, by the coordinator's clock) lets recovery
judge an orphaned branch even when the coordinator's log never heard of it (presumed abort),
and the owner tag (`owner_tag`: 40 bits of a digest of the cluster id and the identity the
coordinator sees) names who alone may commit, abort, acknowledge or read it (§2, "Who may act
on a gtrid"). Gtrids made before owner tags (`ts1.<cluster>.<deadline>.<random>`) still parse,
with no owner: recovery finishes them like any other of its cluster.

A branch's xid is (FORMAT_ID, gtrid, bqual) where bqual is the resource name, and for a MySQL
branch `<resource>#<session id>`. On the wire to the databases:
- PostgreSQL gid: `<format id>_<base64 gtrid>_<base64 bqual>`, psycopg's own layout, so
  `Connection.tpc_recover()` understands it too (at most 188 bytes, under PG's 200).
- MySQL/MariaDB: `X'<hex gtrid>',X'<hex bqual>',<format id>` (gtrid and bqual <= 64 bytes).
Every id is validated against a strict alphabet before it can reach SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

from .._errors import InvalidIdentifier

__all__ = [
    "FORMAT_ID",
    "LOCAL_CLUSTER",
    "GtridInfo",
    "Xid",
    "new_gtrid",
    "owner_tag",
    "parse_gtrid",
    "validate_bqual",
    "validate_cluster_id",
    "validate_resource_name",
]

#: XA format id of twostep branches ("TSTP"); other values belong to someone else.
FORMAT_ID = 0x54535450
#: Cluster id of the xids of `Transaction(conn).prepare()`: manual two-phase commit, which no
#: coordinator may ever finish, so no coordinator may take this cluster id.
LOCAL_CLUSTER = "local"
_ISSUED = "ts1"  # handed out by a coordinator's Begin
_MINTED = "ts2"  # made by a client under a coordinator's description (see `new_gtrid`)
_MAX_PART = 64  # MySQL's limit on gtrid and bqual, in bytes

_CLUSTER_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?")
_RESOURCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# A branch qualifier: the resource name, and for a MySQL branch the session that holds it.
_BQUAL_RE = re.compile(
    r"(?P<resource>[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})(?:#(?P<session>[1-9][0-9]{0,19}))?"
)
_GTRID_RE = re.compile(
    r"(?P<version>ts[12])\.(?P<cluster>[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?)"
    r"\.(?P<deadline>[0-9a-z]{1,10})(?:\.(?P<owner>[a-z2-7]{8}))?\.(?P<nonce>[a-z2-7]{24})"
)
_NONCE_BYTES = 15  # 120 random bits: 24 base32 characters, no padding
_OWNER_RE = re.compile(r"[a-z2-7]{8}")
#: 40 bits: another identity's credential matching a given tag takes ~2^40 credentials the
#: operator issued (tokens or certificates), and the tag keeps the gtrid within 64 bytes.
_OWNER_BYTES = 5


def _reject(kind: str, value: object, rule: str) -> InvalidIdentifier:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return InvalidIdentifier(f"invalid {kind} {shown}: {rule}")


def validate_cluster_id(value: object) -> str:
    if not isinstance(value, str) or not _CLUSTER_RE.fullmatch(value):
        rule = "1-16 of a-z, 0-9 and '-', not starting or ending in '-'"
        raise _reject("cluster id", value, rule)
    return value


def validate_resource_name(value: object) -> str:
    if not isinstance(value, str) or not _RESOURCE_RE.fullmatch(value):
        rule = "1-64 of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.' or '-'"
        raise _reject("resource name", value, rule)
    return value


def validate_bqual(value: object) -> str:
    """A branch qualifier: `resource` or `resource#session` (at most 64 bytes)."""
    if not isinstance(value, str) or len(value) > _MAX_PART or not _BQUAL_RE.fullmatch(value):
        rule = "a resource name, optionally '#' and a session number; at most 64 characters"
        raise _reject("branch qualifier", value, rule)
    return value


@dataclass(frozen=True)
class GtridInfo:
    """What a twostep gtrid says about itself."""

    gtrid: str
    cluster: str
    deadline_unix_s: int
    #: Made by a client (`ts2`), not handed out by Begin (`ts1`): a coordinator that never saw
    #: it decides a Commit for it by its deadline (docs/design.md §2).
    minted: bool = False
    #: The owner tag (`owner_tag`) of the identity the gtrid belongs to; "" in a gtrid made
    #: before owner tags (or by `Transaction(conn).prepare()`), which no client owns.
    owner: str = ""


def parse_gtrid(value: object) -> GtridInfo:
    """Validate a twostep gtrid and return its parts; `InvalidIdentifier` if it is not one."""
    fits = isinstance(value, str) and len(value) <= _MAX_PART
    match = _GTRID_RE.fullmatch(value) if isinstance(value, str) and fits else None
    if match is None:
        rule = (
            "not a twostep gtrid (ts1 or ts2.<cluster>.<deadline>[.<owner>].<nonce>, "
            "at most 64 characters)"
        )
        raise _reject("gtrid", value, rule)
    deadline = int(match["deadline"], 36)
    minted = match["version"] == _MINTED
    return GtridInfo(match.string, match["cluster"], deadline, minted, match["owner"] or "")


def owner_tag(cluster: str, identity: str) -> str:
    """The owner tag of `identity` (a caller as the coordinator identifies it, e.g.
    `token:<sha256 of the token>`) in `cluster`: 8 characters of a-z and 2-7 (40 bits of
    SHA-256). The cluster id is in the digest, so one identity's tags in two clusters differ."""
    validate_cluster_id(cluster)
    digest = hashlib.sha256(f"twostep owner\0{cluster}\0{identity}".encode()).digest()
    return base64.b32encode(digest[:_OWNER_BYTES]).decode().lower()


def new_gtrid(cluster: str, deadline_unix_s: int, *, minted: bool = False, owner: str = "") -> str:
    """A fresh gtrid: unique by 120 random bits, so a restarted coordinator never reuses one.

    `minted`: made by a client rather than a coordinator's Begin (the `ts2` form). `owner`:
    the owner tag (`owner_tag`, a client has it from Describe) of the identity the gtrid
    belongs to; "" only for gtrids no client owns (`Transaction(conn).prepare()`).
    `InvalidIdentifier` for a bad cluster id or tag, or a gtrid over 64 characters.
    """
    validate_cluster_id(cluster)
    if owner and not _OWNER_RE.fullmatch(owner):
        raise _reject("owner tag", owner, "8 of a-z and 2-7")
    nonce = base64.b32encode(secrets.token_bytes(_NONCE_BYTES)).decode().lower()
    version = _MINTED if minted else _ISSUED
    tagged = f".{owner}" if owner else ""
    gtrid = f"{version}.{cluster}.{_base36(deadline_unix_s)}{tagged}.{nonce}"
    if len(gtrid) > _MAX_PART:  # a 16-character cluster id leaves 7 digits: until year 4453
        raise _reject("gtrid", gtrid, "longer than 64 characters: the deadline is too far")
    return gtrid


def _base36(n: int) -> str:
    if n < 0:
        raise ValueError("deadline before 1970")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class Xid:
    """The xid of one twostep branch: (FORMAT_ID, gtrid, bqual).

    The bqual is the resource name; a MySQL branch adds `#<CONNECTION_ID()>` of the session
    that holds it, so that recovery can name a live owner from `XA RECOVER` alone (no message
    to the coordinator needed before PREPARE).
    """

    gtrid: str
    bqual: str

    @classmethod
    def of(cls, gtrid: str, bqual: str) -> Xid:
        """The constructor for xids that will reach SQL: validates both parts."""
        parse_gtrid(gtrid)
        validate_bqual(bqual)
        return cls(gtrid, bqual)

    @classmethod
    def for_branch(cls, gtrid: str, resource: str, session_id: int = 0) -> Xid:
        """The xid of `resource`'s branch, naming `session_id` if given and it fits in the
        64-byte bqual (a resource name over 43 characters may leave it out)."""
        validate_resource_name(resource)
        bqual = f"{resource}#{session_id}" if session_id > 0 else resource
        return cls.of(gtrid, bqual if len(bqual) <= _MAX_PART else resource)

    @property
    def resource(self) -> str:
        return self.bqual.partition("#")[0]

    @property
    def session_id(self) -> int:
        """The MySQL session that holds the branch, from the bqual (0: not named)."""
        return int(self.bqual.partition("#")[2] or 0)

    @property
    def info(self) -> GtridInfo:
        return parse_gtrid(self.gtrid)

    # -- PostgreSQL ----------------------------------------------------------------------------

    def pg_gid(self) -> str:
        return f"{FORMAT_ID}_{_b64(self.gtrid)}_{_b64(self.bqual)}"

    @classmethod
    def from_pg_gid(cls, gid: str) -> Xid | None:
        """Parse a gid from `pg_prepared_xacts`; None when it is not a twostep branch."""
        parts = gid.split("_")
        if len(parts) != 3 or parts[0] != str(FORMAT_ID):
            return None
        try:
            return cls.of(_unb64(parts[1]), _unb64(parts[2]))
        except (InvalidIdentifier, ValueError):
            return None

    # -- MySQL / MariaDB -----------------------------------------------------------------------

    def mysql_literal(self) -> str:
        """`X'..',X'..',fmt`: hex literals, so no character of an id can reach the parser."""
        return f"X'{self.gtrid.encode().hex()}',X'{self.bqual.encode().hex()}',{FORMAT_ID}"

    @classmethod
    def from_mysql_recover(
        cls, format_id: int, gtrid_length: int, bqual_length: int, data: bytes | str
    ) -> Xid | None:
        """Parse one row of `XA RECOVER`; None when it is not a twostep branch."""
        if format_id != FORMAT_ID:
            return None
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        if len(raw) != gtrid_length + bqual_length:
            return None
        try:
            gtrid = raw[:gtrid_length].decode("ascii")
            bqual = raw[gtrid_length:].decode("ascii")
            return cls.of(gtrid, bqual)
        except (InvalidIdentifier, UnicodeDecodeError):
            return None

    def __str__(self) -> str:
        return f"{self.gtrid}/{self.bqual}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    try:
        return base64.b64decode(text.encode(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from exc
