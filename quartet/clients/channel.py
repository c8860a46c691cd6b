"""The one place a role client's channel is built: limits plus the client interceptors
(tracing: a span per call and the trace context in the metadata)."""

from __future__ import annotations

import grpc

from quartet.telemetry.grpc_tracing import TracingClientInterceptor

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def client_interceptors(address: str) -> list[grpc.UnaryUnaryClientInterceptor]:
    """Every client call passes these, outermost first."""
    return [TracingClientInterceptor(address)]


# A role process that restarts comes back on the same port within seconds; gRPC's default
# reconnect backoff (up to 120 s) would keep its clients failing long after it is SERVING.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200),
                     ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 2000)]


def open_channel(address: str,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # a name with several addresses (compose --scale) spreads calls over all of them
        ("grpc.lb_policy_name", "round_robin"),
        *RECONNECT_OPTIONS,
    ])
    return grpc.intercept_channel(channel, *client_interceptors(address))
