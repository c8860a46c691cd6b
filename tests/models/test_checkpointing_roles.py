"""Selective activation checkpointing beyond the actor at ZeRO-0 (`test_checkpointing.py`):
the critic's value model, LoRA adapters and ZeRO-3 each give, with
`--model.gradient_checkpointing_policy selective`, the losses and updated weights of the same
step without checkpointing (fp32, tiny Llama, groups as shared-prefix rows), and it does
recompute there (SiLU runs again in backward: checkpointing silently off would fail)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from tests.models.test_checkpointing import _OpCounter
from tests.ppo.test_shared_prompts import _config, _rows
from tests.trainers.dist_world import world_of_one


@pytest.fixture(scope="module", autouse=True)
def world():
    """A world of one, torn down after this module (see test_checkpointing.py)."""
    yield from world_of_one()


def _role_config(tiny_model_path, selective: bool, lora: bool = False, zero: int = 0):
    cfg = _config(tiny_model_path, 3)  # 9 rows in 3 micro-batches of 3
    ds = replace(cfg.ds, zero_stage=zero)
    if lora:
        ds = replace(ds, lora=replace(ds.lora, rank=4, alpha=8))
    model = replace(cfg.model, gradient_checkpointing_enable=True,
                    gradient_checkpointing_policy="selective") if selective else cfg.model
    return replace(cfg, ds=ds, model=model)


def _trainable(role) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach().clone()) for n, p in role.engine.module.named_parameters()
            if p.requires_grad]


def _counted(step):
    with _OpCounter() as ops:
        metrics = step()
    return metrics, ops.counts


def _assert_same_step(m_sel, m_plain, keys, sel, plain, start) -> None:
    for key in keys:
        assert m_sel[key] == pytest.approx(m_plain[key], rel=1e-6, abs=1e-9), key
    moved = 0.0
    for (name, a), (_, b), (_, s) in zip(_trainable(sel), _trainable(plain), start,
                                         strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, float((a - s).abs().max()))
    assert moved > 1e-5  # the step moved the trained weights, so equality means something


@pytest.mark.parametrize(("lora", "zero"), [(True, 0), (False, 3)], ids=["lora", "zero3"])
def test_actor_selective_step_equals_the_plain_step(tiny_model_path, lora, zero):
    from services.actor.actor import Actor

    batch = _rows()
    plain = Actor(_role_config(tiny_model_path, False, lora, zero))
    sel = Actor(_role_config(tiny_model_path, True, lora, zero))
    want = plain.logprobs(batch)
    g = torch.Generator().manual_seed(3)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [lp + 0.1 * torch.randn(lp.shape, generator=g) for lp in want.logprobs]
    old = [lp - 0.05 for lp in want.logprobs]
    start = _trainable(plain)
    loss = PolicyLossSettings(kl_coef=0.04, entropy_coef=0.01)
    m_plain, ops_plain = _counted(
        lambda: plain.train_step(PolicyMiniBatch(batch, old, adv, ref), loss))
    m_sel, ops_sel = _counted(lambda: sel.train_step(PolicyMiniBatch(batch, old, adv, ref), loss))
    assert ops_sel["aten.silu"] >= ops_plain["aten.silu"] + 2 * 3  # layers x micro-batches
    _assert_same_step(m_sel, m_plain, ("policy_loss", "kl_loss", "entropy", "grad_norm"),
                      sel, plain, start)


def test_critic_selective_step_equals_the_plain_step(tiny_model_path):
    from services.critic.critic import Critic

    batch = _rows()
    plain = Critic(_role_config(tiny_model_path, False))
    sel = Critic(_role_config(tiny_model_path, True))
    want = plain.values(batch)
    g = torch.Generator().manual_seed(4)
    returns = [v + torch.randn(v.shape, generator=g) for v in want]
    mb = ValueMiniBatch(batch, [v.clone() for v in want], returns)
    start = _trainable(plain)
    m_plain, ops_plain = _counted(lambda: plain.train_step(mb, ValueLossSettings()))
    m_sel, ops_sel = _counted(lambda: sel.train_step(mb, ValueLossSettings()))
    assert ops_sel["aten.silu"] >= ops_plain["aten.silu"] + 2 * 3  # layers x micro-batches
    _assert_same_step(m_sel, m_plain, ("value_loss", "grad_norm"), sel, plain, start)
