"""Tracing interceptors over a real in-process gRPC server: server spans are children of the
caller's client spans (W3C traceparent in the metadata), client spans of the open phase,
and pool threads keep the context."""

from __future__ import annotations

import grpc
import pytest

from quartet.clients.channel import open_channel
from quartet.serving import InvalidArgument, RoleServer
from quartet.telemetry import (
    ContextThreadPoolExecutor,
    PhaseTimer,
    configure_tracing,
    iteration_trace,
    shutdown_tracing,
)
from quartet.telemetry.trace_file import read_spans
from quartet.v1 import common_pb2

Req, Resp = common_pb2.InitWeightGroupRequest, common_pb2.InitWeightGroupResponse


def _unary(request, context):
    if request.world_size < 0:
        raise InvalidArgument("world_size: must be >= 0")
    return Resp(rank=request.rank)


def _stream(request, context):
    for i in range(3):
        yield Resp(rank=i)


@pytest.fixture
def traced(tmp_path):
    path = tmp_path / "trace.jsonl"
    configure_tracing("test", "r0", None, path)
    server = RoleServer("test", port=0)
    server.grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Echo", {
            "Say": grpc.unary_unary_rpc_method_handler(
                _unary, Req.FromString, Resp.SerializeToString),
            "Count": grpc.unary_stream_rpc_method_handler(
                _stream, Req.FromString, Resp.SerializeToString),
        }),))
    server.start()
    channel = open_channel(server.address)
    yield path, channel
    channel.close()
    server.stop(0)
    shutdown_tracing()


def test_server_spans_are_children_of_client_spans_under_the_phase(traced):
    path, channel = traced
    say = channel.unary_unary("/test.Echo/Say", Req.SerializeToString, Resp.FromString)
    count = channel.unary_stream("/test.Echo/Count", Req.SerializeToString, Resp.FromString)
    header = common_pb2.RequestHeader(run_id="run1", iteration=4, policy_version=2)
    with iteration_trace("run1", 4, 2), ContextThreadPoolExecutor(2) as pool:
        timer = PhaseTimer(iteration=4)
        with timer("generate"):
            assert say(Req(header=header, rank=5)).rank == 5
            assert [r.rank for r in count(Req(header=header))] == [0, 1, 2]
            assert pool.submit(say, Req(rank=1)).result().rank == 1
            with pytest.raises(grpc.RpcError) as err:
                say(Req(world_size=-1))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            timer.annotate(rows=8)
    by_id = {s.span_id: s for s in read_spans(path)}
    [root] = [s for s in by_id.values() if s.name == "iteration"]
    [phase] = [s for s in by_id.values() if s.name == "generate"]
    assert phase.parent_id == root.span_id and phase.attributes["quartet.rows"] == 8
    servers = [s for s in by_id.values() if s.kind == "SERVER"]
    assert len(servers) == 4  # Say x3 (one from a pool thread, one failing) + Count
    for s in servers:
        client = by_id[s.parent_id]
        assert client.kind == "CLIENT" and client.name == s.name
        assert client.parent_id == phase.span_id and s.trace_id == root.trace_id
    counted = [s for s in servers if s.name == "Count"][0]
    assert counted.attributes["rpc.response_messages"] == 3
    assert counted.attributes["quartet.run_id"] == "run1"
    assert counted.attributes["quartet.iteration"] == 4
    failed = [s for s in servers if s.status == "ERROR"]
    assert len(failed) == 1 and by_id[failed[0].parent_id].status == "ERROR"


def test_a_new_iteration_is_a_new_trace(traced):
    path, channel = traced
    say = channel.unary_unary("/test.Echo/Say", Req.SerializeToString, Resp.FromString)
    for it in range(2):
        with iteration_trace("run", it, it):
            say(Req())
    roots = [s for s in read_spans(path) if s.name == "iteration"]
    assert len({r.trace_id for r in roots}) == 2
