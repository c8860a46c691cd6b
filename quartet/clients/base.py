"""What every gRPC role client shares: a channel (limits, TLS, token), deadlines and retries,
and errors that say who failed.

A dead or misbehaving service must surface as one clear error naming the role, its address,
the RPC and the status — never a bare `_MultiThreadedRendezvous` traceback. Every call has a
deadline (`timeout_s`) and transient failures are retried with the same request id, which
the server deduplicates (see quartet.clients.retry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc

from quartet.clients.channel import DEFAULT_MAX_MESSAGE_BYTES, open_channel
from quartet.clients.retry import RetryPolicy, call_with_retry
from quartet.security import ClientSecurity
from quartet.v1 import common_pb2

T = TypeVar("T")
INFO_TIMEOUT_S = 30.0


class RoleCallError(RuntimeError):
    """A call to a role service failed; `code` is the gRPC status code."""

    def __init__(self, role: str, address: str, method: str, code: grpc.StatusCode | None,
                 details: str) -> None:
        name = code.name if code is not None else "ERROR"
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = " (is the service running and reachable?)"
        super().__init__(f"{role} at {address}: {method} failed with {name}: {details}{hint}")
        self.role, self.address, self.method, self.code, self.details = (
            role, address, method, code, details)


class GrpcRoleClient:
    """Base of the per-role clients: owns the channel; `_call` translates RpcErrors."""

    role = "service"

    def __init__(self, address: str, timeout_s: float = 3600.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 retry: RetryPolicy | None = None,
                 security: ClientSecurity | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.channel = open_channel(address, max_message_bytes, security)

    def _call(self, method: str, fn: Callable[..., T], request: Any,
              timeout: float | None = None, request_id: str | None = None,
              retry: RetryPolicy | None = None) -> T:
        """A unary-response call (request or request iterator) with deadline and retries
        (`retry=NO_RETRY` for collective calls that other processes take part in)."""
        return self._attempt(method, fn, request, timeout, request_id, collect=False,
                             retry=retry)

    def _stream(self, method: str, fn: Callable[..., Iterable[T]], request: Any,
                timeout: float | None = None) -> list[T]:
        """Calls a server-streaming RPC and collects every response (retried whole)."""
        return self._attempt(method, fn, request, timeout, None, collect=True)

    def _attempt(self, method: str, fn: Callable, request: Any, timeout: float | None,
                 request_id: str | None, collect: bool, retry: RetryPolicy | None = None
                 ) -> Any:
        try:
            return call_with_retry(fn, request, timeout_s=timeout or self.timeout_s,
                                   policy=retry or self.retry,
                                   what=f"{self.role} at {self.address}: {method}",
                                   request_id=request_id, collect=collect)
        except grpc.RpcError as exc:
            raise RoleCallError(self.role, self.address, method, exc.code(),
                                exc.details() or "") from None

    def _info(self, stub_method: Callable[..., common_pb2.ServiceInfo]) -> common_pb2.ServiceInfo:
        return self._call("GetInfo", stub_method, common_pb2.GetInfoRequest(),
                          timeout=INFO_TIMEOUT_S)

    def close(self) -> None:
        self.channel.close()
