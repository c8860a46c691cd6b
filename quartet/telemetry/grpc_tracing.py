"""gRPC tracing interceptors: a client span per call, a server span per handled call, and the
W3C `traceparent` carried between them in the call's metadata (OTel's global propagator).

Span attributes: the RPC's service and method, the peer address (client side), the request
header's run id / iteration / policy version when the request has one, and the number of
request and response messages. Role and replica are resource attributes of the process.
Health checks and reflection are not traced (they would drown the timeline).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from quartet.telemetry.tracing import tracer

UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
# RpcMethodHandler field -> (request streamed, response streamed)
HANDLER_KINDS = {"unary_unary": (False, False), "stream_unary": (True, False),
                 "unary_stream": (False, True), "stream_stream": (True, True)}


def rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def span_name(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def note_header(span: trace.Span, message: Any) -> None:
    """Copies a request's RequestHeader (run id, iteration, version) onto the span."""
    try:
        if not message.HasField("header"):
            return
    except (AttributeError, ValueError):
        return
    h = message.header
    span.set_attribute("quartet.run_id", h.run_id)
    span.set_attribute("quartet.iteration", h.iteration)
    span.set_attribute("quartet.policy_version", h.policy_version)
    if h.request_id:
        span.set_attribute("quartet.request_id", h.request_id)


def observed_requests(span: trace.Span, requests: Iterator[Any]) -> Iterator[Any]:
    """Passes a request stream through, noting the first header and the message count."""
    count = 0
    for message in requests:
        if count == 0:
            note_header(span, message)
        count += 1
        yield message
    span.set_attribute("rpc.request_messages", count)


# --------------------------------------------------------------------------- server side
class TracingServerInterceptor(grpc.ServerInterceptor):
    """Opens a SERVER span per call, child of the caller's span from the metadata."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        carrier = {k: v for k, v in (handler_call_details.invocation_metadata or ())
                   if isinstance(v, str)}
        for kind, (request_streaming, response_streaming) in HANDLER_KINDS.items():
            fn = getattr(handler, kind)
            if fn is not None:
                wrap = self._stream if response_streaming else self._unary
                return handler._replace(**{kind: wrap(fn, method, carrier, request_streaming)})
        return handler

    @staticmethod
    def _open(method: str, carrier: dict[str, str]):
        return tracer().start_as_current_span(
            span_name(method), context=propagate.extract(carrier), kind=SpanKind.SERVER,
            attributes=rpc_attributes(method))

    @staticmethod
    def _requests(span: trace.Span, request: Any, streaming: bool) -> Any:
        if streaming:
            return observed_requests(span, request)
        note_header(span, request)
        return request

    def _unary(self, fn: Callable, method: str, carrier: dict[str, str],
               request_streaming: bool) -> Callable:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            with self._open(method, carrier) as span:
                return fn(self._requests(span, request, request_streaming), context)

        return handler

    def _stream(self, fn: Callable, method: str, carrier: dict[str, str],
                request_streaming: bool) -> Callable:
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._open(method, carrier) as span:
                count = 0
                for response in fn(self._requests(span, request, request_streaming), context):
                    count += 1
                    yield response
                span.set_attribute("rpc.response_messages", count)

        return handler


# --------------------------------------------------------------------------- client side
class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                            "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class TracingClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Opens a CLIENT span per call (ended when the call completes) and injects its context
    into the call's metadata."""

    def __init__(self, address: str = "") -> None:
        self.address = address

    def _start(self, details: grpc.ClientCallDetails) -> tuple[trace.Span, _CallDetails]:
        span = tracer().start_span(
            span_name(details.method), kind=SpanKind.CLIENT,
            attributes={**rpc_attributes(details.method), "net.peer.name": self.address})
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = list(details.metadata or ()) + list(carrier.items())
        return span, _CallDetails(details.method, details.timeout, metadata,
                                  details.credentials, getattr(details, "wait_for_ready", None),
                                  getattr(details, "compression", None))

    @staticmethod
    def _finish(span: trace.Span, call: Any) -> Any:
        def done(c) -> None:
            try:
                code = c.code()
            except Exception:  # noqa: BLE001 - a call that failed before it had a status
                code = grpc.StatusCode.UNKNOWN
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, getattr(code, "name", str(code))))
                span.set_attribute("rpc.grpc.status_code", getattr(code, "name", str(code)))
            span.end()

        call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation, client_call_details, request):
        span, details = self._start(client_call_details)
        note_header(span, request)
        return self._finish(span, continuation(details, request))

    def intercept_unary_stream(self, continuation, client_call_details, request):
        span, details = self._start(client_call_details)
        note_header(span, request)
        return self._finish(span, continuation(details, request))

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        span, details = self._start(client_call_details)
        return self._finish(span, continuation(details, observed_requests(span,
                                                                          request_iterator)))

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        span, details = self._start(client_call_details)
        return self._finish(span, continuation(details, observed_requests(span,
                                                                          request_iterator)))
