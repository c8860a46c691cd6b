"""Every way a weight session can fail leaves the replica serving its previous complete
version and able to take the next session (issue 11, item 3): a timeout (then
AbortWeightUpdate), a bad manifest digest, and a sender process killed with SIGKILL half way.

The replica is a real rollout (HF backend, tiny model) behind a RoleServer in this process;
the sender is a real process joined to a gloo group with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from quartet.clients.rollout import GrpcRolloutClient, begin_update
from quartet.types import SamplingConfig
from quartet.weightsync import TensorSpec, WeightGroupConfig, free_port

HERE = Path(__file__).resolve().parent
SENDER = HERE / "model_sender_main.py"
PROMPT = [[1, 50, 60, 70]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def replica(tiny_model_path):
    from quartet.cli.main import parse_serve_args
    from quartet.serving import RoleServer

    module, args = parse_serve_args("rollout", ["--model", str(tiny_model_path), "--backend",
                                                "hf", "--max-model-len", "128"])
    server = RoleServer("rollout", port=0)
    server.start()
    module.serve(args, server)
    client = GrpcRolloutClient(server.address)
    yield client
    client.close()
    server.stop(0)


@pytest.fixture(scope="module")
def specs(tiny_model_path):
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    return [TensorSpec.of(k, v) for k, v in state.items()]


def tokens(client) -> list[int]:
    return client.generate(PROMPT, GREEDY)[0].samples[0].token_ids


def join(client, tiny_model_path, mode: str, version: int) -> subprocess.Popen:
    """A sender process in `mode` and this replica, joined in a fresh two-member group."""
    port = free_port()
    joining = client.init_weight_group_future(
        WeightGroupConfig("127.0.0.1", port, 2, 1, timeout_s=30))
    sender = subprocess.Popen(
        [sys.executable, str(SENDER), str(port), str(tiny_model_path), mode, str(version)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sender.stdout.readline().strip() == "joined"
    joining.result(timeout=60)
    return sender


def finish(sender: subprocess.Popen) -> None:
    if sender.poll() is None:
        sender.kill()
    sender.wait(timeout=30)


def assert_serves(client, version: int, expected_tokens: list[int]) -> None:
    out = client.generate(PROMPT, GREEDY)[0]
    assert out.weight_version == version and out.samples[0].token_ids == expected_tokens
    assert client.info().weight_version == version


def good_update(client, tiny_model_path, specs, version: int) -> list[int]:
    sender = join(client, tiny_model_path, "ok", version)
    try:
        client.begin_weight_update(version, specs, 16 << 10)
        assert client.finish_weight_update(version, timeout_s=60).version == version
    finally:
        finish(sender)
    return tokens(client)


def test_timeout_then_abort_keeps_the_previous_version(replica, tiny_model_path, specs):
    v = replica.info().weight_version
    before = tokens(replica)
    sender = join(replica, tiny_model_path, "stall", v + 1)
    try:
        replica.begin_weight_update(v + 1, specs, 16 << 10)
        with pytest.raises(grpc.RpcError) as err:
            replica.finish_weight_update(v + 1, timeout_s=1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "AbortWeightUpdate" in err.value.details()
        resp = replica.abort_weight_update(v + 1, reason="test: sender stalled")
        assert resp.aborted and resp.version == v
        assert_serves(replica, v, before)
        # The stalled group is dropped: the next group session needs a new group.
        with pytest.raises(grpc.RpcError) as err:
            replica.begin_weight_update(v + 1, specs)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "InitWeightGroup" in err.value.details()
    finally:
        finish(sender)
    after = good_update(replica, tiny_model_path, specs, v + 1)
    assert after != before
    assert_serves(replica, v + 1, after)
    assert not replica.abort_weight_update(0).aborted  # nothing open: a no-op


def test_an_update_begun_early_and_cancelled_keeps_the_previous_version(
        replica, tiny_model_path, specs):
    """The coordinator begins an update while the actor's last mini-batch trains; when that
    training fails it cancels the update: the replica's Finish is dropped, the replica keeps
    serving its previous version and takes the next update once the group re-formed."""
    v = replica.info().weight_version
    before = tokens(replica)
    sender = join(replica, tiny_model_path, "stall", v + 1)
    try:
        update = begin_update([replica], v + 1, specs, 16 << 10, finish_timeout_s=60)
        assert not update.finishes[0].done()  # waiting for a broadcast that will not come
        update.cancel("test: the training before it failed")
        assert update.finishes[0].cancelled()
        assert_serves(replica, v, before)
        assert not replica.abort_weight_update(0).aborted  # nothing left open
    finally:
        finish(sender)
    after = good_update(replica, tiny_model_path, specs, v + 1)
    assert after != before
    assert_serves(replica, v + 1, after)


def test_bad_digest_is_refused_and_the_same_group_takes_the_next_session(
        replica, tiny_model_path, specs):
    v = replica.info().weight_version
    before = tokens(replica)
    sender = join(replica, tiny_model_path, "baddigest", v + 1)
    try:
        replica.begin_weight_update(v + 1, specs, 16 << 10)
        with pytest.raises(grpc.RpcError) as err:
            replica.finish_weight_update(v + 1, timeout_s=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "manifest differs" in err.value.details()
        assert_serves(replica, v, before)
        replica.begin_weight_update(v + 2, specs, 16 << 10)
        assert replica.finish_weight_update(v + 2, timeout_s=60).version == v + 2
        assert tokens(replica) != before
    finally:
        finish(sender)


def test_sender_killed_half_way_leaves_the_previous_version(replica, tiny_model_path, specs):
    v = replica.info().weight_version
    before = tokens(replica)
    sender = join(replica, tiny_model_path, "crash", v + 1)
    try:
        replica.begin_weight_update(v + 1, specs, 16 << 10)
        assert sender.stdout.readline().strip() == "half way"
        os.kill(sender.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as err:
            replica.finish_weight_update(v + 1, timeout_s=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "nothing was loaded" in err.value.details()
        assert_serves(replica, v, before)  # no mixed weights: the old version, exactly
    finally:
        finish(sender)
    after = good_update(replica, tiny_model_path, specs, v + 1)
    assert after != before and torch.tensor(after).numel() > 0
