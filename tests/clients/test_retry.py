"""Client retries: transient statuses are retried with one request id; others are not."""

import grpc
import pytest

from quartet.clients.base import GrpcRoleClient, RoleCallError
from quartet.clients.retry import RetryPolicy
from quartet.serving import RoleServer, Unavailable
from quartet.serving.dedup import request_id_of
from quartet.v1 import common_pb2, reward_pb2_grpc


class _Flaky(reward_pb2_grpc.RewardServicer):
    """GetInfo fails UNAVAILABLE `failures` times, then answers; records request ids."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.ids: list[str | None] = []

    def GetInfo(self, request, context):
        self.ids.append(request_id_of(context.invocation_metadata()))
        if len(self.ids) <= self.failures:
            raise Unavailable("engine restarting")
        return common_pb2.ServiceInfo(role="reward")


@pytest.fixture()
def serve():
    servers = []

    def start(servicer):
        srv = RoleServer("reward", port=0)
        reward_pb2_grpc.add_RewardServicer_to_server(servicer, srv.grpc_server)
        srv.start()
        srv.set_serving(True)
        servers.append(srv)
        return srv.address

    yield start
    for s in servers:
        s.stop(0)


class _Client(GrpcRoleClient):
    role = "reward"

    def __init__(self, address, **kw):
        super().__init__(address, **kw)
        self.stub = reward_pb2_grpc.RewardStub(self.channel)

    def info(self):
        return self._info(self.stub.GetInfo)


FAST = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def test_transient_failures_are_retried_with_the_same_request_id(serve):
    flaky = _Flaky(failures=2)
    client = _Client(serve(flaky), retry=FAST)
    assert client.info().role == "reward"
    assert len(flaky.ids) == 3 and len(set(flaky.ids)) == 1 and flaky.ids[0]


def test_retries_are_bounded_and_the_error_names_the_role(serve):
    flaky = _Flaky(failures=5)
    client = _Client(serve(flaky), retry=FAST)
    with pytest.raises(RoleCallError) as info:
        client.info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(flaky.ids) == 3
    assert "reward at" in str(info.value) and "engine restarting" in str(info.value)


def test_a_dead_address_fails_after_the_retries():
    client = _Client("127.0.0.1:1", retry=FAST, timeout_s=2)
    with pytest.raises(RoleCallError) as info:
        client.info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
