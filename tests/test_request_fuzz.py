"""A time-boxed fuzz of every RPC's request bytes against a real coordinator process (issue 11).

Every unary method of the Coordinator and Admin services and the health check gets random
bytes, messages of its own type with random field values (random text, gtrids of this cluster
and of others, out-of-range numbers and enums), and such messages with their bytes mutated
(flipped, cut, spliced). The caller holds the admin token, so every request reaches decoding
and its handler. For each call: it is answered, with a status a handler gives on purpose
(never DEADLINE_EXCEEDED: a hang; never UNKNOWN or INTERNAL: an exception escaped), and a
request answered INVALID_ARGUMENT (it did not decode, or a field is invalid) left the decision
log's rows as they were (but for the audit note of a refused Resolve, kept by design). Then a
flood of undecodable requests, and at the end: the process is alive, the health check answers
SERVING, and its resident memory grew by less than a bound (grpcio kept ~19.7 KB per
undecodable request before requests were decoded by twostep).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twostep.client.tpc import new_gtrid
from twostep.testing import CoordinatorProcess, coordinator_processes
from twostep.v1 import admin_pb2 as admin_pb
from twostep.v1 import coordinator_pb2 as pb

ADMIN_TOKEN = "admin-token-for-the-fuzz-0123456789"
CLIENT_TOKEN = "client-token-for-the-fuzz-0123456789"
METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
#: Each call must be answered within this; far above any answer's time, it only bounds a hang.
CALL_DEADLINE_S = 10.0
#: How much the coordinator's resident memory may grow over the run (measured: 5-10 MiB; the
#: flood alone would add ~96 MiB at grpcio's old ~19.7 KB per undecodable request).
RSS_GROWTH_LIMIT_MIB = 40
FLOOD_REQUESTS = 5000
#: Statuses that mean the server did not answer on purpose: a hang, or an escaped exception.
NOT_AN_ANSWER = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
}
_FD = _descriptor.FieldDescriptor


def unary_methods() -> list[tuple[str, _descriptor.Descriptor]]:
    """(full method path, request type) of every unary method fuzzed."""
    methods = []
    for module, name in ((pb, "Coordinator"), (admin_pb, "Admin"), (health_pb2, "Health")):
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue  # health Watch: a stream, answered by the same decoder as Check
            methods.append((f"/{service.full_name}/{method.name}", method.input_type))
    return methods


METHODS = unary_methods()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory) -> Iterator[CoordinatorProcess]:
    settings = {"admin_token": ADMIN_TOKEN, "client_token": CLIENT_TOKEN}
    with coordinator_processes(tmp_path_factory.mktemp("fuzz")) as factory:
        yield factory(settings=settings)


@pytest.fixture(scope="module")
def channel(coordinator: CoordinatorProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(coordinator.address) as channel:
        yield channel


def gtrids(cluster: str) -> list[str]:
    soon = int(time.time()) + 60
    return [
        new_gtrid(cluster, soon, minted=True, owner="aaaaaaaa"),
        new_gtrid(cluster, soon),
        new_gtrid(cluster, 1, minted=True),  # long past its deadline
        new_gtrid("elsewhere", soon, minted=True),
    ]


BRANCHES = [
    pb.Branch(resource="orders", bqual="orders", dialect="postgresql"),
    pb.Branch(resource="stock", bqual="stock#7", dialect="mysql", session_id=7),
]


def well_formed(cluster: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """Commit, Abort and Ack requests whose fields are mostly right, so that the checks behind
    decoding (and the log behind them) are reached, not only the decoder."""
    gtrid = st.sampled_from(gtrids(cluster))
    branches = st.lists(st.sampled_from(BRANCHES), max_size=2)
    commit = st.builds(pb.CommitItem, gtrid=gtrid, branches=branches)
    abort = st.builds(pb.AbortItem, gtrid=gtrid, branches=branches, reason=st.text(max_size=20))
    ack = st.builds(pb.AckItem, gtrid=gtrid, one_phase_commit=st.booleans())
    requests = [
        ("Commit", st.builds(pb.CommitRequest, transactions=st.lists(commit, max_size=3))),
        ("Abort", st.builds(pb.AbortRequest, transactions=st.lists(abort, max_size=3))),
        ("Ack", st.builds(pb.AckRequest, transactions=st.lists(ack, max_size=3))),
    ]
    return st.one_of(
        [
            st.tuples(st.just(f"/twostep.v1.Coordinator/{name}"), made.map(_serialized))
            for name, made in requests
        ]
    )


def _serialized(message) -> bytes:
    return message.SerializeToString()


def texts(cluster: str) -> st.SearchStrategy[str]:
    """Strings a request field may hold: random text, and the identifiers the coordinator
    takes (gtrids of this cluster and another, resource names, dialects, states)."""
    known = [
        *gtrids(cluster),
        "orders",
        "orders#12",
        "postgresql",
        "mysql",
        "COMMIT",
        "",
    ]
    return st.one_of(st.sampled_from(known), st.text(max_size=70))


def messages(
    message: _descriptor.Descriptor, cluster: str, depth: int = 0
) -> st.SearchStrategy[bytes]:
    """Serialized messages of type `message` with random values in random fields."""
    fields = {
        f.name: field_values(f, cluster, depth)
        for f in message.fields
        if depth < 2 or f.type != _FD.TYPE_MESSAGE  # nested two deep at most
    }
    make = message_factory.GetMessageClass(message)
    return st.fixed_dictionaries({}, optional=fields).map(
        lambda values: make(**values).SerializeToString()
    )


def field_values(field: _descriptor.FieldDescriptor, cluster: str, depth: int) -> st.SearchStrategy:
    if field.type == _FD.TYPE_MESSAGE:
        make = message_factory.GetMessageClass(field.message_type)
        one = messages(field.message_type, cluster, depth + 1).map(make.FromString)
    else:
        one = scalars(field, cluster)
    if field.is_repeated:
        return st.lists(one, max_size=4)
    return one


def scalars(field: _descriptor.FieldDescriptor, cluster: str) -> st.SearchStrategy:
    bounds = {
        _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
        _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
        _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
        _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
        _FD.TYPE_UINT32: (0, 2**32 - 1),
        _FD.TYPE_UINT64: (0, 2**64 - 1),
        _FD.TYPE_ENUM: (-3, 8),  # proto3 enums are open: unknown numbers decode too
    }
    if field.type in bounds:
        low, high = bounds[field.type]
        small = st.integers(min_value=max(low, -3), max_value=min(high, 1100))
        return st.one_of(small, st.integers(min_value=low, max_value=high))
    if field.type == _FD.TYPE_BOOL:
        return st.booleans()
    if field.type == _FD.TYPE_STRING:
        return texts(cluster)
    if field.type == _FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return st.floats(width=32 if field.type == _FD.TYPE_FLOAT else 64)
    raise AssertionError(f"no strategy for {field.full_name} (type {field.type})")


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message's bytes with a few bytes flipped, cut or spliced in."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and at < len(data):
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif how == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def calls(cluster: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(method, request bytes): random bytes, a random message of the method's request type,
    or such a message mutated; and well-formed Commits, Aborts and Acks, mutated or not."""
    per_method = []
    for method, request_type in METHODS:
        valid = messages(request_type, cluster)
        payloads = st.one_of(st.binary(max_size=200), valid, mutated(valid))
        per_method.append(st.tuples(st.just(method), payloads))
    formed = well_formed(cluster)
    spoilt = formed.flatmap(lambda c: st.tuples(st.just(c[0]), mutated(st.just(c[1]))))
    return st.one_of(*per_method, formed, spoilt)


def log_rows(log_path: Path) -> tuple[int, int]:
    """Rows of the decision log (transactions, notes), read beside the coordinator."""
    with sqlite3.connect(f"file:{log_path}?mode=ro", uri=True) as db:
        (transactions,) = db.execute("SELECT count(*) FROM global_transactions").fetchone()
        (notes,) = db.execute("SELECT count(*) FROM notes").fetchone()
    return transactions, notes


def settle_log(channel: grpc.Channel, cluster: str) -> None:
    """Wait until what earlier calls queued is written: a Commit answers only once its batch,
    and every batch queued before it, is on disk. Adds one row."""
    gtrid = new_gtrid(cluster, int(time.time()) + 60, minted=True)
    branch = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")
    request = pb.CommitRequest(transactions=[pb.CommitItem(gtrid=gtrid, branches=[branch])])
    commit = channel.unary_unary(
        "/twostep.v1.Coordinator/Commit",
        request_serializer=pb.CommitRequest.SerializeToString,
        response_deserializer=pb.CommitResponse.FromString,
    )
    commit(request, metadata=METADATA, timeout=CALL_DEADLINE_S)


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """Send `payload` as the request of `method` as it is; the status of the answer."""
    send = channel.unary_unary(method)  # no serializers: the bytes go out as they are
    try:
        send(payload, metadata=METADATA, timeout=CALL_DEADLINE_S)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_fuzzed_requests_to_every_method_are_answered_and_malformed_ones_record_nothing(
    coordinator, channel
):
    cluster = coordinator.cluster_id
    settle_log(channel, cluster)  # warm up: connection, log, handler paths
    rss_before = rss_mib(coordinator.pid)
    answered: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=1000,  # ~10 s on two cores
        deadline=None,
        derandomize=True,  # the same requests on every run: a failure here is reproducible
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(calls(cluster))
    def fuzz(call: tuple[str, bytes]) -> None:
        method, payload = call
        settle_log(channel, cluster)
        transactions, notes = log_rows(coordinator.log_path)
        code = raw_call(channel, method, payload)
        answered[code] = answered.get(code, 0) + 1
        assert code not in NOT_AN_ANSWER, (method, payload, code, coordinator.output[-2000:])
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            settle_log(channel, cluster)
            now = log_rows(coordinator.log_path)
            assert now[0] == transactions + 1, (method, payload)  # the settling Commit's
            if not method.endswith("/Resolve"):  # a refused Resolve is audited: a note
                assert now[1] == notes, (method, payload)

    fuzz()
    assert answered.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 50, answered  # it got in
    assert answered.get(grpc.StatusCode.OK, 0) > 10, answered  # ... and beyond the checks

    flood = random.Random(11)
    # In rounds of 50 at once: one connection carries at most 100 calls (more are refused).
    for start in range(0, FLOOD_REQUESTS, 50):
        sent: list[Future] = [
            channel.unary_unary(METHODS[(start + i) % len(METHODS)][0]).future(
                flood.randbytes(flood.randint(1, 64)) + b"\xff\xff\xff\xff",
                metadata=METADATA,
                timeout=CALL_DEADLINE_S,
            )
            for i in range(50)
        ]
        for future in sent:
            assert future.code() not in NOT_AN_ANSWER, future.code()

    assert coordinator.is_running()
    health = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply = health(health_pb2.HealthCheckRequest(service=""), timeout=CALL_DEADLINE_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    grown = rss_mib(coordinator.pid) - rss_before
    assert grown < RSS_GROWTH_LIMIT_MIB, f"resident memory grew by {grown:.1f} MiB"
