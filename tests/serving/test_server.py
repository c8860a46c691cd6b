"""RoleServer: health flips, reflection, error mapping and message limits, in-process."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quartet.codec import CodecError
from quartet.serving import InvalidArgument, RoleServer
from quartet.v1 import common_pb2, reward_pb2, reward_pb2_grpc


class _Reward(reward_pb2_grpc.RewardServicer):
    """A test double of the reward servicer: each query text picks a behaviour."""

    def Score(self, request_iterator, context):
        for req in request_iterator:
            q = req.queries[0]
            if q == "invalid":
                raise InvalidArgument("queries[0]: not allowed")
            if q == "codec":
                raise CodecError("batch.tokens.values.dtype", "bad dtype")
            if q == "boom":
                raise RuntimeError("Unsupported CPU attention configuration")
            yield reward_pb2.ScoreResponse(rewards=[1.0])

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(role="reward")


@pytest.fixture()
def server():
    srv = RoleServer("reward", port=0, max_message_bytes=1 << 20)
    srv.start()
    yield srv
    srv.stop(0)


def _health(address, service=""):
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_the_role_is_loaded(server):
    assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), server.grpc_server)
    server.set_serving(True)
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert _health(server.address, "quartet.v1.Reward") == health_pb2.HealthCheckResponse.SERVING
    server.set_serving(False)
    assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_role_service(server):
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), server.grpc_server)
    server.set_serving(True)
    with grpc.insecure_channel(server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(stub.ServerReflectionInfo(iter([req]), timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {"quartet.v1.Reward", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    "query, code, text",
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "queries[0]: not allowed"),
        ("codec", grpc.StatusCode.INVALID_ARGUMENT, "batch.tokens.values.dtype: bad dtype"),
        # The cause and where the details are reach the caller; the traceback stays in the log.
        ("boom", grpc.StatusCode.INTERNAL, "reward /quartet.v1.Reward/Score: internal error: "
         "RuntimeError: Unsupported CPU attention configuration; details in its log"),
    ],
)
def test_domain_errors_become_status_codes(server, query, code, text):
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), server.grpc_server)
    server.set_serving(True)
    with grpc.insecure_channel(server.address) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Score(iter([reward_pb2.ScoreRequest(queries=[query])]), timeout=5))
    assert info.value.code() == code
    assert text in info.value.details()
    assert "Traceback" not in info.value.details()
    # the server keeps serving after an error
    with grpc.insecure_channel(server.address) as ch:
        ok = list(reward_pb2_grpc.RewardStub(ch).Score(
            iter([reward_pb2.ScoreRequest(queries=["fine"])]), timeout=5))
    assert ok[0].rewards == [1.0]


def test_oversized_message_is_rejected(server):
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), server.grpc_server)
    server.set_serving(True)
    with grpc.insecure_channel(server.address) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Score(iter([reward_pb2.ScoreRequest(queries=["x" * (2 << 20)])]),
                            timeout=5))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_internal_errors_name_the_log_a_launcher_set(monkeypatch):
    monkeypatch.setenv("QUARTET_LOG_FILE", "/runs/ppo/logs/reward0.log")
    srv = RoleServer("reward", port=0)
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), srv.grpc_server)
    srv.start()
    try:
        with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError) as info:
            list(reward_pb2_grpc.RewardStub(ch).Score(
                iter([reward_pb2.ScoreRequest(queries=["boom"])]), timeout=5))
        assert info.value.details().endswith("details in /runs/ppo/logs/reward0.log")
    finally:
        srv.stop(0)
