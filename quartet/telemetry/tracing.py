"""Process-wide tracing setup: where this process's spans go.

Every quartet process (the coordinator and each service) calls `configure_tracing` once it
knows its role and replica. Spans are exported over OTLP when an endpoint is given (flag, or
the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), otherwise
appended to a JSONL file (one span per line; several processes may share the file, each line
is one `write`). With neither, tracing stays the OpenTelemetry no-op.

Why a module-level provider instead of OpenTelemetry's global one: the global provider can be
set only once per process, but one process may run several jobs (the coordinator service,
tests), each with its own destination; `configure_tracing` replaces the provider.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

TRACER_NAME = "quartet"
OTLP_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to `path` (read by `quartet trace`)."""

    def __init__(self, path: str | os.PathLike, role: str, replica: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.role = role
        self.replica = replica
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def span_record(self, span: ReadableSpan) -> dict:
        ctx = span.get_span_context()
        parent = span.parent
        return {
            "name": span.name,
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
            "parent_id": format(parent.span_id, "016x") if parent else None,
            "kind": span.kind.name,
            "start_ns": span.start_time,
            "end_ns": span.end_time,
            "status": span.status.status_code.name,
            "role": self.role,
            "replica": self.replica,
            "attributes": dict(span.attributes or {}),
        }

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(self.span_record(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._fd < 0:
                return SpanExportResult.FAILURE
            os.write(self._fd, data.encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


_lock = threading.Lock()
_provider: TracerProvider | None = None


def otlp_endpoint_from_env() -> str | None:
    for name in OTLP_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _otlp_exporter(endpoint: str) -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                              os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = endpoint.rstrip("/")
        return OTLPSpanExporter(endpoint=url if url.endswith("/v1/traces")
                                else f"{url}/v1/traces")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    return Grpc(endpoint=endpoint, insecure=not endpoint.startswith("https://"))


def configure_tracing(role: str, replica: str, otlp_endpoint: str | None = None,
                      file: str | os.PathLike | None = None) -> str:
    """Points this process's spans at OTLP (endpoint or env) or else at `file`.

    Returns where spans go ("otlp <endpoint>", "file <path>" or "off"), for the log.
    """
    global _provider
    endpoint = otlp_endpoint or otlp_endpoint_from_env()
    processor: SpanProcessor | None = None
    where = "off"
    if endpoint:
        processor, where = BatchSpanProcessor(_otlp_exporter(endpoint)), f"otlp {endpoint}"
    elif file:
        # Synchronous: a span is on disk when it ends, even if the process is killed next.
        processor = SimpleSpanProcessor(JsonlSpanExporter(file, role, replica))
        where = f"file {file}"
    provider = None
    if processor is not None:
        provider = TracerProvider(resource=Resource.create({
            "service.name": f"quartet-{role}", "quartet.role": role,
            "quartet.replica": replica}))
        provider.add_span_processor(processor)
    with _lock:
        previous, _provider = _provider, provider
    if previous is not None:
        previous.shutdown()
    return where


def shutdown_tracing() -> None:
    """Flushes and closes the exporters (before a process exits with os._exit)."""
    global _provider
    with _lock:
        previous, _provider = _provider, None
    if previous is not None:
        previous.shutdown()


def tracer() -> trace.Tracer:
    """This process's tracer: the configured provider's, or OpenTelemetry's no-op."""
    provider = _provider
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME)
