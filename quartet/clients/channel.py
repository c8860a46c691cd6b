"""The one place a role client's channel is built: limits, TLS, and the client interceptors
(the cluster token; tracing: a span per call and the trace context in the metadata).

No role client builds a channel itself; `security` defaults to the environment
(`ClientSecurity.from_env`: `QUARTET_AUTH_TOKEN_FILE`, `QUARTET_TLS_*`).
"""

from __future__ import annotations

import collections

import grpc
import grpc.experimental

from quartet.security import TOKEN_METADATA_KEY, TOKEN_SCHEME, ClientSecurity
from quartet.telemetry.grpc_tracing import TracingClientInterceptor

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                          grpc.StreamUnaryClientInterceptor,
                          grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (the cluster token) to every call."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(d.method, d.timeout, [*(d.metadata or ()), *self._metadata],
                            d.credentials, d.wait_for_ready, getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def client_interceptors(address: str, security: ClientSecurity | None = None) -> list:
    """Every client call passes these, outermost first."""
    chain: list = []
    if security is not None and security.token:
        chain.append(MetadataInterceptor([(TOKEN_METADATA_KEY, TOKEN_SCHEME + security.token)]))
    chain.append(TracingClientInterceptor(address))
    return chain


# A role process that restarts comes back on the same port within seconds; gRPC's default
# reconnect backoff (up to 120 s) would keep its clients failing long after it is SERVING.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200),
                     ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 2000)]


# A call with a response stream (Generate, and every scoring call: see request_streams) is read
# by the thread that made it, polling the call's own completion queue, instead of each message
# and the status being handed over by the channel's spin thread: one thread hop less per
# message on a host whose cores the roles keep busy. Loopback, one message: median 0.55 ->
# 0.37 ms, mean 1.2 -> 0.4 ms (docs/benchmarks.md, "Eighth pass (rpc)"). Such a call's
# `code()`/`details()` raise instead of waiting while it runs (nothing here asks early).
SINGLE_THREADED_STREAMS = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]


def transport_channel(address: str, security: ClientSecurity | None = None,
                      options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A bare channel: TLS when a CA is configured, no interceptors (health probes)."""
    security = security if security is not None else ClientSecurity.from_env()
    if not security.tls:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=security.root_ca, private_key=security.private_key,
        certificate_chain=security.cert_chain)
    return grpc.secure_channel(address, credentials, options=options)


def open_channel(address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to `address` with message limits, TLS when a CA is configured, the token
    and tracing."""
    security = security if security is not None else ClientSecurity.from_env()
    channel = transport_channel(address, security, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # a name with several addresses (compose --scale) spreads calls over all of them
        ("grpc.lb_policy_name", "round_robin"),
        *RECONNECT_OPTIONS,
        *SINGLE_THREADED_STREAMS,
    ])
    return grpc.intercept_channel(channel, *client_interceptors(address, security))
