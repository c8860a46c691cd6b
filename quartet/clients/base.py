"""What every gRPC role client shares: a channel with limits, and errors that say who failed.

A dead or misbehaving service must surface as one clear error naming the role, its address,
the RPC and the status — never a bare `_MultiThreadedRendezvous` traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc

from quartet.clients.channel import DEFAULT_MAX_MESSAGE_BYTES, open_channel
from quartet.v1 import common_pb2

T = TypeVar("T")


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
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = open_channel(address, max_message_bytes)

    def _call(self, method: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise RoleCallError(self.role, self.address, method, exc.code(),
                                exc.details() or "") from None

    def _stream(self, method: str, fn: Callable[..., Iterable[T]], *args: Any,
                **kwargs: Any) -> list[T]:
        """Calls a server-streaming RPC and collects every response."""
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return list(fn(*args, **kwargs))
        except grpc.RpcError as exc:
            raise RoleCallError(self.role, self.address, method, exc.code(),
                                exc.details() or "") from None

    def _info(self, stub_method: Callable[..., common_pb2.ServiceInfo]) -> common_pb2.ServiceInfo:
        return self._call("GetInfo", stub_method, common_pb2.GetInfoRequest(), timeout=30)

    def close(self) -> None:
        self.channel.close()
