"""The actor role in-process behind a real gRPC server: log-probs, PPO steps, errors."""

import grpc
import pytest
import torch

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.codec import RowBatch, TensorAssembler
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from quartet.serving import RoleServer
from quartet.v1 import actor_pb2, actor_pb2_grpc


@pytest.fixture(scope="module")
def actor_service(tiny_model_path):
    from services.actor.actor import Actor
    from services.actor.servicer import ActorServicer

    cfg = TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=str(tiny_model_path)),
        ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-3),
        train=RoleTrainConfig(batch_size=4, micro_batch_size=2),
    )
    actor = Actor(cfg)
    srv = RoleServer("actor", port=0)
    srv.start()
    actor_pb2_grpc.add_ActorServicer_to_server(ActorServicer(actor), srv.grpc_server)
    srv.set_serving(True)
    yield actor, GrpcActorClient(srv.address, timeout_s=120)
    srv.stop(0)


def _batch():
    rows = [torch.tensor([1, 50, 60, 70, 80]), torch.tensor([1, 9, 10]),
            torch.tensor([1, 5, 6, 7]), torch.tensor([1, 30, 31, 32, 33, 34])]
    return RowBatch(rows, [2, 1, 3, 2])


def test_logprobs_equal_a_teacher_forced_forward(actor_service, tiny_model_path):
    from transformers import AutoModelForCausalLM

    _, client = actor_service
    batch = _batch()
    got = client.logprobs(batch, temperature=0.7)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    for row, p, lp in zip(batch.rows, batch.prompt_lengths, got, strict=True):
        with torch.no_grad():
            logits = model(row[None]).logits[0, :-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, row[1:, None]).squeeze(-1)[p - 1:]
        assert torch.allclose(lp, expected, atol=1e-4)


def test_train_step_moves_the_policy_towards_positive_advantages(actor_service):
    _, client = actor_service
    batch = _batch()
    before = client.logprobs(batch)
    adv = [torch.ones_like(x) for x in before]
    metrics = client.train_step(PolicyMiniBatch(batch, before, adv), PolicyLossSettings())
    assert metrics["global_step"] >= 1 and metrics["grad_norm"] > 0
    after = client.logprobs(batch)
    assert sum(a.sum() for a in after) > sum(b.sum() for b in before)


def test_wrong_row_count_and_missing_group_are_clear_errors(actor_service):
    _, client = actor_service
    batch = _batch()
    lp = client.logprobs(batch)
    small = PolicyMiniBatch(batch, lp, lp).slice(0, 3)
    with pytest.raises(RoleCallError) as info:
        client.train_step(small, PolicyLossSettings())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly 4 rows" in str(info.value)
    with pytest.raises(RoleCallError) as info:
        client.broadcast_weights(version=1)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "InitWeightGroup" in str(info.value)


def test_stream_weights_and_manifest_cover_every_parameter(actor_service):
    actor, client = actor_service
    manifest = client.stub.GetWeightManifest(actor_pb2.GetWeightManifestRequest())
    names = [t.name for t in manifest.tensors]
    tensors = TensorAssembler().add_all(client.stream_weights(chunk_bytes=1 << 16))
    assert list(tensors) == names
    params = dict(actor.engine.module.named_parameters())
    for name in names:
        assert torch.equal(tensors[name], params[name].detach())


def _nll(model, rows: RowBatch) -> float:
    """Token-mean next-token NLL over each row's targets (tokens after the prompt length)."""
    total, count = 0.0, 0
    for row, p in zip(rows.rows, rows.prompt_lengths, strict=True):
        with torch.no_grad():
            logits = model(row[None]).logits[0, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, row[1:, None]).squeeze(-1)[p - 1:]
        total, count = total - float(lp.sum()), count + lp.numel()
    return total / count


def test_ptx_rows_add_their_next_token_loss(actor_service, tiny_model_path):
    """PPO-ptx: with zero advantages only ptx_coef * NLL(pre-training rows) trains; the
    reported ptx_loss is that NLL (hand-checked against a plain forward), and it falls.
    The IS-correction metrics come back too."""
    from transformers import AutoModelForCausalLM

    actor, client = actor_service
    batch = _batch()
    ptx = RowBatch([torch.tensor([1, 11, 12, 13, 14, 15])] * 2
                   + [torch.tensor([1, 21, 22, 23])] * 2, [1, 1, 1, 1])
    before = client.logprobs(batch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    model.load_state_dict({k: v.float() for k, v in actor.engine.module.state_dict().items()})
    # the token mean over the whole mini-batch's pre-training rows (16 target tokens)
    expected = _nll(model, ptx)
    from quartet.algos.off_policy import ISCorrection

    loss = PolicyLossSettings(ptx_coef=1.0, is_correction=ISCorrection(level="token"))
    mb = PolicyMiniBatch(batch, before, [torch.zeros_like(x) for x in before],
                         rollout_logprobs=[x - 0.01 for x in before], ptx=ptx)
    metrics = client.train_step(mb, loss)
    assert metrics["ptx_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["vllm_kl"] == pytest.approx(-0.01, abs=1e-4)
    assert metrics["is_filter_ratio"] == 0.0
    model.load_state_dict({k: v.float() for k, v in actor.engine.module.state_dict().items()})
    assert _nll(model, ptx) < expected


def _train_request(actor_service):
    from quartet.ppo.wire import encode_policy_minibatch
    from quartet.v1 import common_pb2

    _, client = actor_service
    batch = _batch()
    lp = client.logprobs(batch)
    mb = PolicyMiniBatch(batch, lp, [torch.ones_like(x) for x in lp])
    return list(encode_policy_minibatch(mb, PolicyLossSettings(), common_pb2.RequestHeader()))


def test_a_retried_train_step_is_applied_once(actor_service):
    """Same x-quartet-request-id twice (a client retry): one optimizer step, one answer."""
    actor, client = actor_service
    requests = _train_request(actor_service)
    before = actor.global_step
    weights = next(actor.engine.module.parameters()).detach().clone()
    meta = (("x-quartet-request-id", "retry-test-1"),)
    first = client.stub.TrainStep(iter(requests), metadata=meta, timeout=120)
    moved = next(actor.engine.module.parameters()).detach().clone()
    second = client.stub.TrainStep(iter(requests), metadata=meta, timeout=120)
    assert actor.global_step == before + 1
    assert first == second
    assert torch.equal(next(actor.engine.module.parameters()).detach(), moved)
    assert not torch.equal(moved, weights)
    third = client.stub.TrainStep(iter(requests), metadata=(("x-quartet-request-id", "other"),),
                                  timeout=120)
    assert actor.global_step == before + 2 and third.global_step == before + 2


def test_prepare_run_refuses_a_different_learning_rate_naming_the_field(actor_service):
    from quartet.ppo.run_settings import train_settings

    actor, client = actor_service
    wanted = train_settings(actor.cfg)
    wanted.learning_rate = 5e-4
    with pytest.raises(RoleCallError) as info:
        client.prepare_run("run-lr", wanted)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "train.learning_rate" in str(info.value) and "--adam.lr" in str(info.value)


def test_runs_one_after_another_restart_the_schedule_and_versions(actor_service):
    from quartet.ppo.run_settings import train_settings

    actor, client = actor_service
    wanted = train_settings(actor.cfg)
    wanted.total_steps = 17
    first = client.prepare_run("run-a", wanted)
    assert first.new_run and actor.engine.total_steps == 17
    actor.weight_version = 3  # as after three syncs of run-a
    assert not client.prepare_run("run-a", wanted).new_run  # re-announcing changes nothing
    assert actor.weight_version == 3
    wanted.total_steps = 9
    assert client.prepare_run("run-b", wanted).new_run
    assert actor.engine.total_steps == 9 and actor.weight_version == -1
    assert actor.engine.scheduler.last_epoch == 0


def test_hf_export_writes_the_tokenizer_the_actor_does_not_keep(actor_service, tmp_path):
    from transformers import AutoTokenizer

    actor, _ = actor_service
    assert "tokenizer" not in vars(actor)  # loaded for the pad id and for exports only
    hf_dir, _ = actor.save(str(tmp_path), "tok", hf_export=True, hf_only=True)
    saved = AutoTokenizer.from_pretrained(hf_dir)
    assert saved.pad_token_id == actor.pad_id
    assert saved("hello world")["input_ids"] == actor.tokenizer("hello world")["input_ids"]
