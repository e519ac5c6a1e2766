"""Hostile mode: what peers that misbehave cost one coordinator, and what others still get.

Each scenario runs against a fresh coordinator process (no databases) and reports the
coordinator's resident memory (RSS, /proc) before and after, and whether another client's
Begin + Commit and the health check were answered meanwhile (and in how long):
- `stalled`: calls that send their headers and never their message, N on one connection and
  N on each of 8 connections, then the other client;
- `garbage`: `\\xff\\xff\\xff\\xff` sent raw to Commit, Begin, Admin.Status and the health
  check from 8 threads
  for `--seconds` (the grpcio leak of issue 11), with and without the client token (an
  anonymous peer is refused before decoding); the coordinator's stderr bytes beside it;
- `begin-flood`: Begin{count: 1000} from 8 threads for `--seconds`, the other client asking
  Commit of its own (`ts2`) gtrids meanwhile (p50, refusals), then the log's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twostep.client.tpc import new_gtrid
from twostep.testing import CoordinatorProcess
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_TOKEN = "bench-client-token-0123456789abcdef"
_GARBAGE_TO = (
    "/twostep.v1.Coordinator/Commit",
    "/twostep.v1.Coordinator/Begin",
    "/twostep.v1.Admin/Status",
    "/grpc.health.v1.Health/Check",
)
_BRANCH = pb.Branch(resource="orders", bqual="orders", dialect="postgresql")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each flood")
    parser.add_argument("--stalled", type=int, default=200, help="stalled calls per connection")
    parser.add_argument("--threads", type=int, default=8)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _other_client(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """Begin + Commit, then the health check, from a connection of its own: what came back."""
    with grpc.insecure_channel(address, options=_OWN_CONNECTION) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        started = time.monotonic()
        try:
            begin = pb.BeginRequest(timeout_ms=30_000)
            (txn,) = stub.Begin(begin, metadata=metadata, timeout=5).transactions
            item = pb.CommitItem(gtrid=txn.gtrid, branches=[_BRANCH])
            stub.Commit(pb.CommitRequest(transactions=[item]), metadata=metadata, timeout=5)
            commit = f"Begin+Commit {1000 * (time.monotonic() - started):.1f} ms"
        except grpc.RpcError as exc:
            commit = f"Begin+Commit {exc.code().name}"
        started = time.monotonic()
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            health = f"health {1000 * (time.monotonic() - started):.1f} ms"
        except grpc.RpcError as exc:
            health = f"health {exc.code().name}"
    return f"{commit}, {health}"


def _never(release: threading.Event) -> Iterator[bytes]:
    release.wait()
    yield from ()


def _stalled(base: Path, args: argparse.Namespace) -> None:
    coordinator = CoordinatorProcess(base / "stalled").start()
    assert coordinator.pid is not None
    try:
        before = _rss_mib(coordinator.pid)
        for connections in (1, 8):
            release = threading.Event()
            channels = [
                grpc.insecure_channel(coordinator.address, options=_OWN_CONNECTION)
                for _ in range(connections)
            ]
            calls = [
                channel.stream_unary("/twostep.v1.Coordinator/Commit").future(_never(release))
                for channel in channels
                for _ in range(args.stalled)
            ]
            time.sleep(1.0)
            answer = _other_client(coordinator.address)
            rss = _rss_mib(coordinator.pid)
            print(
                f"| stalled | {connections} x {args.stalled} | {before:.0f} -> {rss:.0f} MiB "
                f"| {answer} |"
            )
            release.set()
            for call in calls:
                call.cancel()
            for channel in channels:
                channel.close()
    finally:
        coordinator.stop()


def _flood(seconds: float, threads: int, one: Callable[[], None]) -> int:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def run(i: int) -> None:
        while time.monotonic() < stop:
            one()
            counts[i] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    return sum(counts)


def _sender(
    methods: list[grpc.UnaryUnaryMultiCallable], metadata: tuple[tuple[str, str], ...]
) -> Callable[[], None]:
    """One round of garbage to each of `methods`."""

    def one() -> None:
        for method in methods:
            with contextlib.suppress(grpc.RpcError):
                method(b"\xff\xff\xff\xff", metadata=metadata, timeout=5)

    return one


def _garbage(base: Path, args: argparse.Namespace) -> None:
    for label, settings, metadata in (
        ("open (loopback, no credentials)", {}, ()),
        (
            "client token, peer sends it",
            {"client_token": _TOKEN},
            (("authorization", f"Bearer {_TOKEN}"),),
        ),
        ("client token, anonymous peer", {"client_token": _TOKEN}, ()),
    ):
        coordinator = CoordinatorProcess(base / f"garbage-{len(label)}", settings=settings).start()
        assert coordinator.pid is not None
        try:
            time.sleep(0.5)
            before = _rss_mib(coordinator.pid)
            stderr_before = len(coordinator.output)
            with grpc.insecure_channel(coordinator.address) as channel:
                methods = [channel.unary_unary(m) for m in _GARBAGE_TO]

                calls = len(_GARBAGE_TO) * _flood(
                    args.seconds, args.threads, _sender(methods, metadata)
                )
            time.sleep(1.0)
            after = _rss_mib(coordinator.pid)
            answer = _other_client(coordinator.address, metadata)
            logged = len(coordinator.output) - stderr_before
            print(
                f"| garbage, {label} | {calls} calls in {args.seconds:.0f} s | {before:.0f} -> "
                f"{after:.0f} MiB ({1024 * 1024 * (after - before) / max(calls, 1):.0f} B/call)"
                f", stderr +{logged} B | {answer} |"
            )
        finally:
            coordinator.stop()


def _begin_flood(base: Path, args: argparse.Namespace) -> None:
    coordinator = CoordinatorProcess(base / "begin-flood").start()
    assert coordinator.pid is not None
    try:
        before = _rss_mib(coordinator.pid)
        answers = {"ok": 0, "exhausted": 0}
        latencies: list[float] = []
        refused = [0]
        done = threading.Event()

        def other() -> None:
            with grpc.insecure_channel(coordinator.address, options=_OWN_CONNECTION) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                while not done.is_set():
                    started = time.monotonic()
                    gtrid = new_gtrid(coordinator.cluster_id, int(time.time()) + 30, minted=True)
                    item = pb.CommitItem(gtrid=gtrid, branches=[_BRANCH])
                    try:
                        stub.Commit(pb.CommitRequest(transactions=[item]), timeout=30)
                        latencies.append(time.monotonic() - started)
                    except grpc.RpcError:
                        refused[0] += 1
                        time.sleep(0.05)

        watcher = threading.Thread(target=other)
        watcher.start()
        with grpc.insecure_channel(coordinator.address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)

            def one() -> None:
                try:
                    stub.Begin(pb.BeginRequest(count=1000, timeout_ms=1000), timeout=30)
                    answers["ok"] += 1
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    answers["exhausted"] += 1

            _flood(args.seconds, args.threads, one)
        peak = _rss_mib(coordinator.pid)
        done.set()
        watcher.join()
        with sqlite3.connect(coordinator.log_path) as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM global_transactions").fetchone()
        p50 = 1000 * statistics.median(latencies) if latencies else float("nan")
        print(
            f"| begin-flood | {answers['ok']} served, {answers['exhausted']} RESOURCE_EXHAUSTED "
            f"| {before:.0f} -> {peak:.0f} MiB, {rows} rows "
            f"| other client's Commit (ts2) p50 {p50:.1f} ms, {len(latencies)} answered, "
            f"{refused[0]} refused |"
        )
    finally:
        coordinator.stop()


def run(args: argparse.Namespace) -> int:
    print("| scenario | load | coordinator | another client |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="twostep-hostile-") as base:
        _stalled(Path(base), args)
        _garbage(Path(base), args)
        _begin_flood(Path(base), args)
    return 0
