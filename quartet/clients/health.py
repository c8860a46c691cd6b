"""Standard gRPC health checks against a role, with a clear error when it never comes up."""

from __future__ import annotations

import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quartet.clients.channel import transport_channel


def health_status(address: str, timeout_s: float = 2.0, service: str = "") -> str:
    """'SERVING', 'NOT_SERVING', ... or 'UNREACHABLE' (over TLS when the environment
    configures it; health needs no token and makes no trace span)."""
    with transport_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_for_serving(
    address: str,
    timeout_s: float = 120.0,
    process: subprocess.Popen | None = None,
    what: str = "service",
) -> None:
    """Polls health until SERVING; raises TimeoutError, or RuntimeError if `process` exits."""
    deadline = time.monotonic() + timeout_s
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} at {address} exited with code {process.returncode} "
                               "before it was SERVING")
        status = health_status(address, timeout_s=1.0)
        if status == "SERVING":
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} at {address} not SERVING after {timeout_s:.0f}s "
                       f"(last status {status})")
