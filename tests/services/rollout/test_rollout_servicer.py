"""The Rollout servicer over real gRPC (in-process server on port 0) against a fake engine:
status codes, field names, versions, cancellation, and that the service keeps serving."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from quartet.clients.rollout import GrpcRolloutClient
from quartet.codec import ragged_to_proto
from quartet.engines.generation import GenerationStream, Generator, RolloutEngine
from quartet.serving import RoleServer
from quartet.testing.faults import wait_for
from quartet.types import LoadStats, PromptOutput, SampleOutput, SamplingConfig
from quartet.v1 import rollout_pb2, rollout_pb2_grpc
from quartet.weightsync import TensorSpec, WeightGroupConfig, specs_of
from services.rollout.servicer import RolloutServicer

WEIGHTS = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}


class FakeGenerator(Generator):
    """Echoes: sample k of a prompt is [len(prompt), k, version-of-weights]."""

    backend = "fake"
    model_name = "fake-model"
    max_model_len = 32
    vocab_size = 100

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.cancelled = threading.Event()
        self.group: WeightGroupConfig | None = None
        self.loaded: dict[str, torch.Tensor] = {}
        self.marker = 0
        self.burst = False
        """Every output is done before `generate` returns (as a batch whose requests all
        finish in the same engine step)."""

    def _start(self, prompts, sampling) -> GenerationStream:
        stream = GenerationStream(len(prompts), on_cancel=self.cancelled.set)

        def run():
            for i, p in enumerate(prompts):
                if self.delay_s:
                    time.sleep(self.delay_s)
                if stream.cancelled:
                    return
                samples = [SampleOutput([len(p), k, self.marker], "length",
                                        [-1.0] * 3 if sampling.logprobs else None)
                           for k in range(sampling.n)]
                stream.put(PromptOutput(i, p, samples))
            stream.close()

        if self.burst:
            run()
        else:
            threading.Thread(target=run, daemon=True).start()
        return stream

    def weight_specs(self):
        return {n: TensorSpec.of(n, t) for n, t in WEIGHTS.items()}

    def init_weight_group(self, config):
        self.group = config

    def receive_weights(self, version, specs, should_load=lambda: True):
        self.marker = version
        return LoadStats(len(specs), 0, 0.0)

    def load_weights(self, named_tensors):
        for n, t in named_tensors:
            self.loaded[n] = t.clone()
        self.marker = int(self.loaded["b"][0])
        return LoadStats(len(self.loaded), 0, 0.0)

    def decode(self, token_ids):
        return " ".join(map(str, token_ids))


@pytest.fixture()
def served():
    fake = FakeGenerator()
    engine = RolloutEngine(fake, initial_version=0, admission_timeout_s=30)
    server = RoleServer("rollout", port=0)
    rollout_pb2_grpc.add_RolloutServicer_to_server(RolloutServicer(engine), server.grpc_server)
    server.start()
    server.set_serving(True)
    client = GrpcRolloutClient(server.address)
    yield fake, client, server
    client.close()
    server.stop(0)


def expect_status(code, pattern, fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    assert pattern in info.value.details(), info.value.details()


def test_generate_streams_one_response_per_prompt(served):
    fake, client, _ = served
    outs = client.generate([[1, 2, 3], [4]], SamplingConfig(n=3, logprobs=True),
                           return_text=True)
    assert [o.prompt_index for o in outs] == [0, 1]
    assert outs[0].prompt_tokens == [1, 2, 3]
    assert [s.token_ids for s in outs[0].samples] == [[3, 0, 0], [3, 1, 0], [3, 2, 0]]
    assert outs[1].samples[2].text == "1 2 0"
    assert outs[1].samples[0].logprobs == [-1.0] * 3
    assert all(o.weight_version == 0 for o in outs)


def test_outputs_done_together_travel_in_one_message_when_asked(served):
    fake, client, _ = served
    fake.burst = True
    stub = rollout_pb2_grpc.RolloutStub(grpc.insecure_channel(client.address))

    def messages(batch: bool) -> list[rollout_pb2.GenerateResponse]:
        return list(stub.Generate(rollout_pb2.GenerateRequest(
            prompt_tokens=ragged_to_proto([[1] * (i + 1) for i in range(5)]),
            sampling=rollout_pb2.SamplingParams(n=2, max_new_tokens=4),
            batch_outputs=batch)))

    one_each = messages(False)  # a client that predates batch_outputs
    assert [m.prompt_index for m in one_each] == [0, 1, 2, 3, 4]
    assert not any(m.more for m in one_each)
    (batched,) = messages(True)
    assert [batched.prompt_index] + [m.prompt_index for m in batched.more] == [0, 1, 2, 3, 4]
    assert [s.response_tokens for s in batched.more[3].samples] == [[5, 0, 0], [5, 1, 0]]
    outs = client.generate([[1], [2, 2], [3, 3, 3]], SamplingConfig(n=2))  # asks for batches
    assert [(o.prompt_index, o.samples[1].token_ids) for o in outs] == [
        (0, [1, 1, 0]), (1, [2, 1, 0]), (2, [3, 1, 0])]


def test_bad_requests_name_the_field_and_the_service_keeps_serving(served):
    _, client, _ = served
    inv = grpc.StatusCode.INVALID_ARGUMENT
    ok = SamplingConfig()
    expect_status(inv, "prompt_tokens: must hold at least one prompt",
                  client.generate, [], ok)
    expect_status(inv, "prompt_tokens[1]: 40 tokens leave no room",
                  client.generate, [[1], [1] * 40], ok)
    expect_status(inv, "prompt_tokens[0]: token id 100 is outside", client.generate,
                  [[100]], ok)
    stub = rollout_pb2_grpc.RolloutStub(grpc.insecure_channel(client.address))
    for sampling, field in [
        (rollout_pb2.SamplingParams(n=0, max_new_tokens=4), "sampling.n: must be in 1.."),
        (rollout_pb2.SamplingParams(n=1, temperature=-1, max_new_tokens=4),
         "sampling.temperature: must be >= 0, got -1.0"),
        (rollout_pb2.SamplingParams(n=1, top_p=1.5, max_new_tokens=4), "sampling.top_p"),
        (rollout_pb2.SamplingParams(n=1, max_new_tokens=0), "sampling.max_new_tokens"),
    ]:
        req = rollout_pb2.GenerateRequest(prompt_tokens=ragged_to_proto([[1, 2]]),
                                          sampling=sampling)
        expect_status(inv, field, lambda r=req: list(stub.Generate(r)))
    req = rollout_pb2.GenerateRequest(prompt_tokens=ragged_to_proto([[1.0, 2.0]]),
                                      sampling=rollout_pb2.SamplingParams(n=1, max_new_tokens=2))
    expect_status(inv, "prompt_tokens.values.dtype", lambda: list(stub.Generate(req)))
    assert len(client.generate([[1, 2]], ok)) == 1  # still serving


def test_weight_sessions_validate_and_advance_versions(served):
    fake, client, _ = served
    specs = specs_of(WEIGHTS)
    fail = grpc.StatusCode.FAILED_PRECONDITION
    inv = grpc.StatusCode.INVALID_ARGUMENT
    expect_status(fail, "weight group: not joined", client.begin_weight_update, 1, specs)
    expect_status(inv, "rank: rank 0 is the actor", client.init_weight_group,
                  WeightGroupConfig("127.0.0.1", 1234, 2, 0))
    stub = rollout_pb2_grpc.RolloutStub(grpc.insecure_channel(client.address))
    from quartet.v1 import common_pb2
    expect_status(inv, "world_size: must be in 2..", stub.InitWeightGroup,
                  common_pb2.InitWeightGroupRequest(master_address="h", master_port=1,
                                                    world_size=1, rank=1))
    assert client.init_weight_group(WeightGroupConfig("127.0.0.1", 1234, 3, 2)) == 2
    assert fake.group.rank == 2 and fake.group.world_size == 3

    expect_status(inv, "tensors[1].name: unknown tensor 'nope'", client.begin_weight_update,
                  1, [specs[0], TensorSpec("nope", torch.float32, (2,))])
    expect_status(inv, "tensors[0].shape: [3, 2] does not match the model's [2, 2]",
                  client.begin_weight_update, 1, [TensorSpec("w", torch.float32, (3, 2))])
    expect_status(inv, "tensors: must list at least one", client.begin_weight_update, 1, [])
    expect_status(fail, "version: 0 is stale", client.begin_weight_update, 0, specs)

    assert client.begin_weight_update(3, specs, bucket_bytes=1 << 20) == 1
    expect_status(fail, "version: an update to version 3 is already open",
                  client.begin_weight_update, 4, specs)
    expect_status(fail, "version: no open update session for version 4 (the open session "
                  "is for 3)", client.finish_weight_update, 4)
    assert client.finish_weight_update(3, timeout_s=10).version == 3
    assert client.info().weight_version == 3
    outs = client.generate([[1]], SamplingConfig())
    assert outs[0].weight_version == 3 and outs[0].samples[0].token_ids[2] == 3
    expect_status(fail, "version: 2 is stale; this replica already serves version 3",
                  client.begin_weight_update, 2, specs)


def test_push_weights_fallback(served):
    fake, client, _ = served
    new = {"w": torch.ones(2, 2), "b": torch.full((2,), 7.0)}
    assert client.push_weights(5, new, chunk_bytes=4).version == 5
    assert torch.equal(fake.loaded["w"], new["w"])
    info = client.info()
    assert (info.weight_version, info.backend, info.model) == (5, "fake", "fake-model")
    assert client.generate([[1]], SamplingConfig())[0].samples[0].token_ids[2] == 7
    expect_status(grpc.StatusCode.FAILED_PRECONDITION, "version: 5 is stale",
                  client.push_weights, 5, new)
    bad = {"w": torch.ones(2, 2, dtype=torch.float64).to(torch.int64), "b": torch.ones(2)}
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, "tensors[0].dtype",
                  client.push_weights, 6, bad)


def test_header_policy_version_newer_than_replica_is_refused(served):
    from quartet.v1 import common_pb2

    _, client, _ = served
    expect_status(grpc.StatusCode.FAILED_PRECONDITION,
                  "header.policy_version: this replica serves weight version 0",
                  client.generate, [[1]], SamplingConfig(),
                  header=common_pb2.RequestHeader(policy_version=2))


def test_client_cancel_aborts_engine_requests(served):
    fake, client, _ = served
    fake.delay_s = 0.2
    call = client.generate_stream([[1]] * 50, SamplingConfig(n=2))
    first = next(iter(call))
    assert first.prompt_index == 0
    assert client.info().inflight_requests > 0
    call.cancel()
    assert fake.cancelled.wait(5)
    deadline = time.monotonic() + 5
    while client.info().inflight_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.info().inflight_requests == 0


def test_update_waits_for_running_generation(served):
    fake, client, _ = served
    fake.delay_s = 0.1
    assert client.init_weight_group(WeightGroupConfig("127.0.0.1", 1234, 2, 1)) == 1
    call = client.generate_stream([[1]] * 10, SamplingConfig())
    it = iter(call)
    first = next(it)
    client.begin_weight_update(1, specs_of(WEIGHTS))
    later = client.generate_stream([[2]], SamplingConfig())  # admitted after the update
    rest = list(it)
    assert {o.weight_version for o in [first, *rest]} == {0}
    assert len(rest) == 9 and all(o.samples[0].token_ids[2] == 0 for o in rest)
    assert client.finish_weight_update(1, timeout_s=10).version == 1
    after = list(later)
    assert after[0].weight_version == 1 and after[0].samples[0].token_ids[2] == 1


def test_versions_are_per_run(served):
    """A second run against the same replica starts its versions again at 1."""
    from quartet.v1 import common_pb2

    fake, client, _ = served
    run_a, run_b = (common_pb2.RequestHeader(run_id=r) for r in ("run-a", "run-b"))
    new = {"w": torch.ones(2, 2), "b": torch.full((2,), 7.0)}
    assert client.push_weights(1, new, header=run_a).version == 1
    assert client.push_weights(2, new, header=run_a).version == 2
    expect_status(grpc.StatusCode.FAILED_PRECONDITION, "version: 1 is stale",
                  client.push_weights, 1, new, header=run_a)
    assert client.push_weights(1, new, header=run_b).version == 1
    assert client.info().weight_version == 1
    expect_status(grpc.StatusCode.FAILED_PRECONDITION, "version: 1 is stale",
                  client.push_weights, 1, new, header=run_b)


def test_a_weight_load_trims_the_heap_at_once(monkeypatch):
    """A load frees what it staged (and vLLM's unpacked weights) just before the next
    Generate, which follows within milliseconds: the idle trim would wait for the generate
    phase to end, so the load asks for its trim at once (here the idle one is 60 s away)."""
    import quartet.heap as heap

    monkeypatch.setattr(heap, "release_free_heap", lambda *_: True)
    engine = RolloutEngine(FakeGenerator(), initial_version=0, admission_timeout_s=30)
    trimmer = heap.PhaseTrimmer(settle_s=60.0)
    servicer = RolloutServicer(engine, trimmer=trimmer)
    server = RoleServer("rollout", port=0)
    rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server.grpc_server)
    server.start()
    server.set_serving(True)
    client = GrpcRolloutClient(server.address)
    try:
        client.generate([[1]], SamplingConfig())  # its own trim stays owed, 60 s out
        assert client.push_weights(1, {"w": torch.ones(2, 2), "b": torch.ones(2)}).version == 1
        wait_for(lambda: trimmer.trims == 1, 10, "the trim after a pushed load", poll_s=0.01)
        client.init_weight_group(WeightGroupConfig("127.0.0.1", 1234, 2, 1))
        client.begin_weight_update(2, specs_of(WEIGHTS))
        assert client.finish_weight_update(2, timeout_s=10).version == 2
        wait_for(lambda: trimmer.trims == 2, 10, "the trim after a session's load",
                 poll_s=0.01)
    finally:
        client.close()
        server.stop(0)
