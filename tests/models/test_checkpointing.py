"""Selective activation checkpointing (`--model.gradient_checkpointing_policy selective`):
it recomputes the pointwise ops and not the matrix multiplies, the actor's PPO step gives
the losses and updated weights of a step without checkpointing (bit for bit, fp32, tiny
Llama, groups as shared-prefix rows), and it is refused, naming the flag, where it cannot
take effect."""

from __future__ import annotations

import collections
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quartet.config.base import ConfigError, parse_config, parse_config_or_raise
from quartet.config.model import ModelConfig
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import training_role_config
from tests.ppo.test_shared_prompts import _config, _rows
from tests.trainers.dist_world import world_of_one


@pytest.fixture(scope="module", autouse=True)
def world():
    """The actors here join a world of one that is torn down after this module: left alive,
    DeepSpeed's groups derived from it outlive the process group and a later in-process
    DeepSpeed engine fails with "Group ... is not registered" (seen in the full suite:
    tests/serving/test_fuzz_rpcs.py)."""
    yield from world_of_one()


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops that run (forward, recompute and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _actor(tiny_model_path, policy: str | None):
    from services.actor.actor import Actor

    cfg = _config(tiny_model_path, 3)  # 9 rows in 3 micro-batches of 3
    if policy is not None:
        cfg = replace(cfg, model=replace(cfg.model, gradient_checkpointing_enable=True,
                                         gradient_checkpointing_policy=policy))
    return Actor(cfg)


def _step(actor, batch, old, adv, ref) -> tuple[dict[str, float], collections.Counter]:
    loss = PolicyLossSettings(kl_coef=0.04, entropy_coef=0.01)
    with _OpCounter() as ops:
        metrics = actor.train_step(PolicyMiniBatch(batch, old, adv, ref), loss)
    return metrics, ops.counts


def test_selective_recomputes_pointwise_ops_and_gives_the_same_step(tiny_model_path):
    batch = _rows()
    plain, selective, full = (_actor(tiny_model_path, p) for p in (None, "selective", "full"))
    assert selective.updater.share_prefix  # the groups run as shared-prefix rows
    want = plain.logprobs(batch, with_entropy=True)
    got = selective.logprobs(batch, with_entropy=True)  # eval: nothing is checkpointed
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [lp + 0.1 * torch.randn(lp.shape, generator=g) for lp in want.logprobs]
    old = [lp - 0.05 for lp in want.logprobs]
    start = [p.detach().clone() for p in plain.engine.module.parameters()]
    m_plain, ops_plain = _step(plain, batch, old, adv, ref)
    m_sel, ops_sel = _step(selective, batch, old, adv, ref)
    m_full, ops_full = _step(full, batch, old, adv, ref)

    # what each policy ran again in backward: selective the pointwise ops only, full the
    # matrix multiplies as well
    assert ops_sel["aten.mm"] == ops_plain["aten.mm"]
    assert ops_full["aten.mm"] > ops_plain["aten.mm"]
    layers = 2 * 3  # decoder layers x micro-batches
    for op in ("aten.silu", "aten.rsqrt"):
        assert ops_sel[op] - ops_plain[op] >= layers, op

    # both policies: the same step bit for bit (full is `bench trl --algo grpo`'s default)
    for key in ("policy_loss", "kl_loss", "entropy", "ratio", "grad_norm"):
        assert m_sel[key] == m_plain[key], key
        assert m_full[key] == m_plain[key], key
    moved = 0.0
    for (name, a), b, c, s in zip(selective.engine.module.named_parameters(),
                                  plain.engine.module.parameters(),
                                  full.engine.module.parameters(), start, strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(c, b), name
        moved = max(moved, float((a - s).detach().abs().max()))
    assert moved > 1e-4  # the step moved the weights, so equality means something


def test_the_actor_and_critic_started_by_a_ppo_run_get_the_policy():
    base = ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--reward.func",
            "r.py"]
    cfg = parse_config(PPOJobConfig, [*base, "--actor.gradient_checkpointing_enable",
                                      "--actor.gradient_checkpointing_policy", "selective"])
    model = training_role_config(cfg, "m", 1e-6, None).model
    assert model.gradient_checkpointing_enable
    assert model.gradient_checkpointing_policy == "selective"


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"gradient_checkpointing_policy": "selective"},
     "takes effect only with --model.gradient_checkpointing_enable"),
    ({"gradient_checkpointing_enable": True, "gradient_checkpointing_policy": "selective",
      "gradient_checkpointing_use_reentrant": True},
     "non-reentrant.*--model.gradient_checkpointing_use_reentrant"),
])
def test_a_policy_that_cannot_take_effect_is_refused(kwargs, why):
    with pytest.raises(ConfigError, match=why) as err:
        ModelConfig(model_name_or_path="m", **kwargs)
    assert err.value.field == "gradient_checkpointing_policy"


def test_the_ppo_flag_is_refused_without_checkpointing():
    base = ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--reward.func",
            "r.py"]
    with pytest.raises(ConfigError, match="--actor.gradient_checkpointing_enable") as err:
        parse_config_or_raise(PPOJobConfig, [*base, "--actor.gradient_checkpointing_policy",
                                             "selective"])
    assert "--actor.gradient_checkpointing_policy:" in str(err.value)
