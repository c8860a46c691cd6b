"""`--trace.otlp_endpoint`: spans reach an OTLP/gRPC collector (a real in-process receiver
speaking the collector's TraceService), with role and replica as resource attributes."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from quartet.telemetry import configure_tracing, iteration_trace, shutdown_tracing


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.got = threading.Event()

    def Export(self, request, context):
        self.requests.append(request)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    """(receiver, endpoint) of an OTLP/gRPC trace receiver on a free port."""
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"http://127.0.0.1:{port}"
    server.stop(0)


def test_spans_are_exported_over_otlp_grpc(tmp_path, collector):
    receiver, endpoint = collector
    where = configure_tracing("coordinator", "run-x", endpoint, tmp_path / "unused.jsonl")
    assert where.startswith("otlp ")
    with iteration_trace("run-x", 0, 0):
        pass
    shutdown_tracing()  # flushes the batch
    assert receiver.got.wait(10)
    assert not (tmp_path / "unused.jsonl").exists()
    [resource_spans] = receiver.requests[0].resource_spans
    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attrs["quartet.role"] == "coordinator" and attrs["service.name"] == "quartet-coordinator"
    names = [s.name for ss in resource_spans.scope_spans for s in ss.spans]
    assert names == ["iteration"]


def test_quartet_trace_reads_the_collectors_otlp_json(tmp_path, collector):
    """The compose collector's file exporter writes OTLP/JSON lines; `read_spans` turns them
    into the same spans as the JSONL file (ids hex, parents linked, role from the resource)."""
    from google.protobuf.json_format import MessageToJson

    from quartet.telemetry import PhaseTimer
    from quartet.telemetry.trace_file import iteration_roots, read_spans

    receiver, endpoint = collector
    configure_tracing("coordinator", "run-y", endpoint)
    with iteration_trace("run-y", 3, 1):
        with PhaseTimer()("train"):
            pass
    shutdown_tracing()
    assert receiver.got.wait(10)
    path = tmp_path / "otlp.jsonl"
    path.write_text("".join(MessageToJson(r, indent=None) + "\n" for r in receiver.requests))
    spans = read_spans(path)
    [root] = iteration_roots(spans)
    [phase] = [s for s in spans if s.name == "train"]
    assert root.attributes["quartet.iteration"] == 3 and root.role == "coordinator"
    assert phase.parent_id == root.span_id and phase.trace_id == root.trace_id
    assert len(root.trace_id) == 32 and int(root.trace_id, 16)
