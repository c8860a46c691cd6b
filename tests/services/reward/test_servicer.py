"""Reward servicer over a real in-process server, with rule-reward files written per test."""

import grpc
import pytest

from quartet.clients.base import RoleCallError
from quartet.clients.reward import GrpcRewardClient
from quartet.rewards.base import RewardInputs
from quartet.rewards.rule import RuleReward
from quartet.serving import RoleServer
from quartet.v1 import reward_pb2, reward_pb2_grpc
from services.reward.servicer import RewardServicer


@pytest.fixture()
def serve_reward(tmp_path):
    servers = []

    def start(source: str) -> GrpcRewardClient:
        path = tmp_path / f"reward{len(servers)}.py"
        path.write_text(source)
        srv = RoleServer("reward", port=0)
        srv.start()
        reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(RuleReward(path), "rule"),
                                                     srv.grpc_server)
        srv.set_serving(True)
        servers.append(srv)
        return GrpcRewardClient(srv.address, timeout_s=30)

    yield start
    for s in servers:
        s.stop(0)


def _inputs(n):
    return RewardInputs([f"q{i} answer {i}" for i in range(n)], [f"q{i}" for i in range(n)],
                        [f" answer {i}" for i in range(n)], [str(i) for i in range(n)])


def test_rule_reward_with_labels_extra_logs_and_slices(serve_reward, monkeypatch):
    client = serve_reward(
        "def reward_func(queries, prompts, labels, responses):\n"
        "    ok = [float(r.strip().endswith(l)) for r, l in zip(responses, labels)]\n"
        "    return {'rewards': ok, 'extra_logs': {'len': [len(r) for r in responses]}}\n")
    monkeypatch.setattr("quartet.clients.reward.ROWS_PER_SLICE", 3)
    result = client.score(_inputs(7))
    assert result.rewards == [1.0] * 7
    assert result.scores == result.rewards
    assert result.extra_logs["len"] == [9.0] * 7


def test_wrong_reward_count_is_a_clear_error_not_a_zero(serve_reward):
    client = serve_reward("def reward_func(queries, prompts, labels):\n    return [1.0]\n")
    with pytest.raises(RoleCallError) as info:
        client.score(_inputs(3))
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "expected 3 values (one per sample), got 1" in str(info.value)


def test_non_finite_reward_is_rejected(serve_reward):
    client = serve_reward(
        "def reward_func(queries, prompts, labels):\n    return [float('nan')] * len(queries)\n")
    with pytest.raises(RoleCallError, match="must be finite"):
        client.score(_inputs(2))


def test_mismatched_request_lists_are_invalid_argument(serve_reward):
    client = serve_reward("def reward_func(queries, prompts, labels):\n    return [0.0]\n")
    stub = reward_pb2_grpc.RewardStub(client.channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Score(iter([reward_pb2.ScoreRequest(queries=["a", "b"], prompts=["a"])])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts: has 1 entries for 2 queries" in info.value.details()
