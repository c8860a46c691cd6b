"""Multi-rank actor, critic, reference and reward model (`quartet serve` with WORLD_SIZE=2,
gloo on CPU):
two ranks behind one endpoint compute what one rank computes — scores, the PPO step's loss,
its gradient norm and the updated weights — under ZeRO-2 and ZeRO-3; and ranks > 0 never
outlive a SIGKILLed rank 0.

Runs real processes: take the heavy lock (`flock /tmp/quartet-heavy.lock ...`).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from quartet.clients.actor import GrpcActorClient
from quartet.clients.critic import GrpcCriticClient
from quartet.clients.reference import GrpcReferenceClient
from quartet.clients.reward import GrpcRewardClient
from quartet.codec import RowBatch, TensorAssembler
from quartet.config.base import config_to_argv
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.launch.local import LocalCluster
from quartet.launch.ranks import start_role_ranks
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from quartet.rewards.base import RewardInputs
from quartet.testing import write_tiny_reward_model

pytestmark = pytest.mark.slow

# (world size, ZeRO stage); the first is the reference every other must match.
SETUPS = [(1, 2), (2, 2), (2, 3)]
LR = 1e-2


def _batch() -> RowBatch:
    """8 rows with uneven response lengths (1..9 tokens): per-rank or per-micro-batch
    normalisation would weigh them differently from the whole mini-batch."""
    g = torch.Generator().manual_seed(0)
    rows, prompts = [], []
    for i in range(8):
        p, r = 2 + i % 3, 1 + (i * 5) % 9
        rows.append(torch.randint(3, 200, (p + r,), generator=g))
        prompts.append(p)
    return RowBatch(rows, prompts)


def _role_args(model: str, stage: int) -> list[str]:
    return config_to_argv(TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=model),
        ds=DeepSpeedConfig(zero_stage=stage, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=LR),
        train=RoleTrainConfig(batch_size=8, micro_batch_size=2, seed=7),
    ))


def _start(tmp_path, role: str, model: str, world: int, stage: int):
    cluster = LocalCluster(tmp_path / f"{role}-w{world}-z{stage}", env={"OMP_NUM_THREADS": "1"})
    ranks = start_role_ranks(cluster, role,
                            ["--save-root", str(tmp_path), *_role_args(model, stage)], world)
    cluster.wait_healthy(240)
    return cluster, ranks


def _saved(client, out) -> dict[str, torch.Tensor]:
    resp = client.save(str(out), hf_export=True, tag="step1")
    return load_file(os.path.join(resp.hf_dir, "model.safetensors"))


def _assert_same_weights(got: dict, want: dict, what: str) -> None:
    """Equal to 1% of one step. Adam's first step moves each element by about +-lr whatever
    its gradient's size, so an element whose gradient is near Adam's eps turns the float
    noise of a different reduction order (2 ranks, ZeRO-3 partitions) into up to ~0.5% of
    lr (measured: 4e-5 at lr 1e-2). A wrong weighting of tokens moves whole tensors; a wrong
    overall scale, which Adam's step hides, shows in grad_norm (checked separately)."""
    assert got.keys() == want.keys(), what
    for name in want:
        assert torch.allclose(got[name], want[name], atol=LR / 100, rtol=0), f"{what}: {name}"


def _each_setup(tmp_path, role: str, client_cls, model: str, run) -> list[dict]:
    """`run(client, first)` on a fresh service per setup (`first` is the reference run's
    result, None on the reference itself); results in SETUPS order, tagged with the setup."""
    results: list[dict] = []
    for world, stage in SETUPS:
        cluster, _ = _start(tmp_path, role, model, world, stage)
        try:
            client = client_cls(cluster.services[role].address, timeout_s=300)
            out = run(client, results[0] if results else None)
            out["weights"] = _saved(client, tmp_path / f"{role}-{world}-{stage}")
            out["what"] = f"{role} ranks={world} zero={stage}"
            results.append(out)
            # SIGTERM: rank 0 drains and releases the others; every rank exits 0
            codes = cluster.stop()
            assert set(codes.values()) == {0}, (out["what"], codes)
        finally:
            cluster.stop()
    return results


def _assert_matches(got: dict, want: dict, keys: tuple[str, ...]) -> None:
    what = got["what"]
    assert want["metrics"]["world_size"] == 1.0 and got["metrics"]["world_size"] == 2.0, what
    for a, b in zip(got["old"], want["old"], strict=True):
        assert torch.allclose(a, b, atol=1e-5), what
    for key in keys:
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-4,
                                                    abs=1e-6), f"{what}: {key}"
    _assert_same_weights(got["weights"], want["weights"], what)


def test_two_actor_ranks_take_the_step_of_one(tmp_path, tiny_model_path):
    batch = _batch()
    g = torch.Generator().manual_seed(1)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    loss = PolicyLossSettings(entropy_coef=0.01, kl_coef=0.1)

    def run(client, first):
        old = client.logprobs(batch)
        base = first["old"] if first else old
        ref = [lp - 0.05 for lp in base]
        metrics = client.train_step(PolicyMiniBatch(batch, base, adv, ref), loss)
        streamed = TensorAssembler().add_all(client.stream_weights(chunk_bytes=1 << 14))
        return {"old": old, "metrics": metrics, "after": client.logprobs(batch),
                "streamed": streamed, "manifest": client.weight_manifest()}

    results = _each_setup(tmp_path, "actor", GrpcActorClient, str(tiny_model_path), run)
    for got in results:  # the stream (all ranks gather under ZeRO-3) sends what Save wrote
        assert [(s.name, s.shape) for s in got["manifest"]] == [
            (n, tuple(t.shape)) for n, t in got["streamed"].items()], got["what"]
        for name, tensor in got["weights"].items():
            assert torch.equal(got["streamed"][name], tensor), f"{got['what']}: {name}"
    want = results[0]
    for got in results[1:]:
        _assert_matches(got, want, ("policy_loss", "kl_loss", "entropy", "grad_norm"))
        for a, b in zip(got["after"], want["after"], strict=True):
            assert torch.allclose(a, b, atol=1e-4), got["what"]
    # the step did something, so equal weights are not equal starting points
    assert not torch.allclose(torch.cat(want["after"]), torch.cat(want["old"]), atol=1e-4)


def test_two_critic_ranks_take_the_step_of_one(tmp_path, tiny_model_path):
    batch = _batch()
    g = torch.Generator().manual_seed(2)
    returns = [torch.randn(n, generator=g) for n in batch.response_lengths()]

    def run(client, first):
        old = client.values(batch)
        base = first["old"] if first else old
        metrics = client.train_step(ValueMiniBatch(batch, base, returns),
                                    ValueLossSettings(clip_eps=0.2))
        return {"old": old, "metrics": metrics}

    results = _each_setup(tmp_path, "critic", GrpcCriticClient, str(tiny_model_path), run)
    for got in results[1:]:
        _assert_matches(got, results[0], ("value_loss", "grad_norm"))


def test_two_reference_ranks_with_zero3_score_like_one_and_exit_with_rank0(tmp_path,
                                                                           tiny_model_path):
    """Then rank 0 of the two is SIGKILLed: rank 1 (serving rank 0's calls, any role: the
    loop is quartet.serving.ranks') notices and exits within 30 s, never outliving it."""
    batch = _batch()
    scores = []
    for world, args in ((1, []), (2, ["--zero-stage", "3"])):
        with LocalCluster(tmp_path / f"reference-{world}") as cluster:
            ranks = start_role_ranks(cluster, "reference",
                                     ["--model", str(tiny_model_path), *args], world)
            cluster.wait_healthy(240)
            client = GrpcReferenceClient(cluster.services["reference"].address, timeout_s=300)
            scores.append(client.logprobs(batch, temperature=0.7))
            if world == 2:
                _assert_rank1_exits_when_rank0_is_killed(ranks)
    for a, b in zip(scores[1], scores[0], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_two_reward_model_ranks_with_zero3_score_like_one_in_the_given_dtype(tmp_path):
    """7 texts of uneven length over 2 ranks (one row repeated to even the shares), 2 rows
    per micro-batch: the same scores as one rank; bf16 scores are bf16 values."""
    model = write_tiny_reward_model(tmp_path / "rm")
    texts = ["a b c d e f", "d e", "the cat sat on the mat", "1 2 3", "x", "q r s t", "m n"]
    inputs = RewardInputs(queries=texts, prompts=[""] * 7, responses=[""] * 7, labels=[""] * 7)
    scores = {}
    for world, dtype, args in ((1, "float32", []), (2, "float32", ["--zero-stage", "3"]),
                               (2, "bfloat16", ["--zero-stage", "3"])):
        with LocalCluster(tmp_path / f"reward-{world}-{dtype}") as cluster:
            start_role_ranks(cluster, "reward", ["--model", str(model), "--dtype", dtype,
                                                 "--micro-batch-size", "2", *args], world)
            cluster.wait_healthy(240)
            client = GrpcRewardClient(cluster.services["reward"].address, timeout_s=300)
            scores[world, dtype] = torch.tensor(client.score(inputs).rewards)
    one, two, bf16 = scores[1, "float32"], scores[2, "float32"], scores[2, "bfloat16"]
    assert torch.allclose(two, one, atol=1e-5), (two, one)
    # the head computed in bf16: every score is a bf16 number, near the fp32 one
    assert torch.equal(bf16.to(torch.bfloat16).float(), bf16), bf16
    assert not torch.equal(one.to(torch.bfloat16).float(), one)  # fp32 ones are not
    assert torch.allclose(bf16, one, atol=0.02), (bf16, one)


def _assert_rank1_exits_when_rank0_is_killed(ranks) -> None:
    os.kill(ranks[0].process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while ranks[1].process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks[1].process.poll() is not None, "rank 1 outlived rank 0 by 30 s"
    assert ranks[1].process.returncode == 1
    assert "rank 0 is gone" in ranks[1].log_path.read_text()
