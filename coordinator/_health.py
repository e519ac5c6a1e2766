"""The health probe of `twostep-coordinator --health-check ADDRESS`.

Asks a running coordinator's standard gRPC health service (`grpc.health.v1.Health/Check`, the
service `_server` registers) for the whole server's status (service name ""), the same question
a Kubernetes `grpc:` probe asks. A container's HEALTHCHECK and compose's healthcheck run it, so
the image needs no extra probe binary. The server answers SERVING once it accepts calls and
NOT_SERVING from the moment a graceful shutdown begins. A coordinator with TLS is asked over
TLS with the client's environment variables (`twostep.client.ChannelConfig.from_env()`:
TWOSTEP_COORDINATOR_CA, and under mutual TLS TWOSTEP_COORDINATOR_CERT / _KEY).
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from twostep.client import ChannelConfig

__all__ = ["PROBE_TIMEOUT_S", "check_health"]

#: Shorter than a container runtime's default health-check timeout (30 s) and the 5 s the
#: deploy files give, so the probe's own answer, not the runtime's kill, says what went wrong.
PROBE_TIMEOUT_S = 4.0


def check_health(
    address: str, timeout_s: float = PROBE_TIMEOUT_S, channel: ChannelConfig | None = None
) -> str:
    """The serving status the coordinator at `address` ("HOST:PORT") reports for the whole
    server: "SERVING", "NOT_SERVING" or "UNKNOWN".

    `channel` (TLS) defaults to `ChannelConfig.from_env()`. Raises `grpc.RpcError` if no
    answer came within `timeout_s` seconds (nothing listening: UNAVAILABLE at once; no answer
    in time: DEADLINE_EXCEEDED; a TLS port asked in plain text: UNAVAILABLE),
    `ConfigurationError` if a TLS file cannot be read.
    """
    with (channel or ChannelConfig.from_env()).open(address) as opened:
        stub = health_pb2_grpc.HealthStub(opened)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
