"""A client of a coordinator's Admin service, for tests: recovery passes, status, scans.

The admin token is read from the coordinator's data dir (`admin-token`, written at its first
start) unless a token file is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc

from twostep.client import ChannelConfig
from twostep.v1 import admin_pb2 as _admin_pb
from twostep.v1 import admin_pb2_grpc as _admin_grpc

__all__ = ["Admin"]


class _Coordinator(Protocol):
    """What Admin needs of a coordinator (a `CoordinatorProcess` has both)."""

    @property
    def address(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...


class Admin:
    """The coordinator's Admin service, with the token from its data dir."""

    def __init__(
        self,
        coordinator: _Coordinator,
        token_file: Path | None = None,
        channel: ChannelConfig | None = None,
    ):
        token_path = token_file or coordinator.data_dir / "admin-token"
        token = token_path.read_text().strip()
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel: grpc.Channel = (channel or ChannelConfig()).open(coordinator.address)
        self._stub = _admin_grpc.AdminStub(self._channel)

    def recover(self, *, dry_run: bool = False, timeout: float = 30.0) -> _admin_pb.RecoveryReport:
        """One recovery pass now (eager: no backoff); its report. Timeout in seconds."""
        request = _admin_pb.RecoverRequest(dry_run=dry_run)
        return self._stub.Recover(
            request, metadata=self._metadata, timeout=timeout, wait_for_ready=True
        )

    def status(self, timeout: float = 10.0) -> _admin_pb.StatusResponse:
        return self._stub.Status(
            _admin_pb.StatusRequest(), metadata=self._metadata, timeout=timeout
        )

    def scan(self, resource: str, timeout: float = 10.0) -> _admin_pb.ScanResourceResponse:
        """Every prepared xid on one registered resource; `grpc.RpcError` UNAVAILABLE if the
        database cannot be reached, NOT_FOUND if no such resource is registered."""
        request = _admin_pb.ScanResourceRequest(resource=resource)
        return self._stub.ScanResource(request, metadata=self._metadata, timeout=timeout)

    def prepared_here(self) -> list[str]:
        """The branches of this coordinator's cluster still prepared, as "resource: xid"
        lines, on every registered resource; a resource that cannot be scanned is a line
        "resource: <why>" (nothing is known to be finished there)."""
        left = []
        for resource in self.status().resources:
            try:
                scanned = self.scan(resource.name)
            except grpc.RpcError as exc:
                left.append(f"{resource.name}: {exc.details()}")
                continue
            left += [f"{resource.name}: {x.raw}" for x in scanned.xids if x.owner == "ours"]
        return left

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
