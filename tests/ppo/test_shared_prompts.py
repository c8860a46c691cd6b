"""The samples of one prompt computed as one shared-prefix row give what plain rows give:
log-probs, entropies and values, the losses of one actor and one critic step, and the
updated weights (fp32, tiny Llama)."""

from __future__ import annotations

import pytest
import torch

from quartet.codec import RowBatch
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.engines.scoring import to_model_layout
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig

ROWS = 9


def _rows() -> RowBatch:
    """Prompt A x3 (two samples that share their first response tokens), B x2, C alone, D x2
    with identical samples (empty tails), A once more at the end: groups of 3/4, 2, 1, 2 in
    one micro-batch, and split ones with smaller micro-batches."""
    g = torch.Generator().manual_seed(5)

    def toks(n: int) -> list[int]:
        return torch.randint(3, 200, (n,), generator=g).tolist()

    a, b, c, d = toks(6), toks(4), toks(5), toks(7)
    shared_start = toks(2)
    d_sample = toks(3)
    samples = [(a, shared_start + toks(3)), (a, shared_start + toks(5)), (a, toks(4)),
               (b, toks(6)), (b, toks(2)), (c, toks(4)), (d, d_sample), (d, d_sample),
               (a, toks(3))]
    return RowBatch([torch.tensor(p + r) for p, r in samples], [len(p) for p, _ in samples])


def _config(tiny_model_path, micro: int) -> TrainingRoleConfig:
    # Adam eps 1e-4: a first Adam step is lr x g / (|g| + eps), about lr x sign(g) with the
    # default eps, so a gradient entry within rounding of 0 would move by a random +-lr;
    # a larger eps keeps such entries' steps proportional to their (tiny) gradients
    return TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=str(tiny_model_path)),
        ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-3, eps=1e-4),
        train=RoleTrainConfig(batch_size=ROWS, micro_batch_size=micro, seed=7))


def _pair(role_cls, tiny_model_path, micro: int):
    """(shared, plain): two fresh roles with the same weights, one in the plain layout."""
    shared, plain = (role_cls(_config(tiny_model_path, micro)) for _ in range(2))
    assert shared.updater.share_prefix  # sdpa, padded: on by default
    plain.updater.share_prefix = False
    return shared, plain


def _close_lists(a, b, rtol=1e-5, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _assert_same_weights(a, b, start) -> None:
    moved = 0.0
    for (name, pa), pb, ps in zip(a.named_parameters(), b.parameters(), start.parameters(),
                                  strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, float((pa - ps).detach().abs().max()))
    assert moved > 1e-4  # the step did move the weights (so equality means something)


def test_groups_become_one_row_each():
    layout = to_model_layout(_rows(), pad_id=0, share_prefix=True)
    assert layout.shared and layout.model_batch.input_ids.shape[0] == 4  # A, B, C, D
    assert layout.model_batch.num_tokens < 0.7 * layout.rows.num_tokens
    assert not to_model_layout(_rows(), pad_id=0, share_prefix=False).shared
    assert not to_model_layout(_rows(), pad_id=0, packed=True, share_prefix=True).shared
    lone = RowBatch([torch.tensor([5, 6, 7]), torch.tensor([8, 9])], [1, 1])
    assert not to_model_layout(lone, pad_id=0, share_prefix=True).shared  # nothing to share


@pytest.mark.parametrize("micro", [ROWS, 3])
def test_actor_logprobs_step_and_weights_equal_the_plain_layout(tiny_model_path, micro):
    from services.actor.actor import Actor

    batch = _rows()
    shared, plain = _pair(Actor, tiny_model_path, micro)
    got = shared.logprobs(batch, with_entropy=True)
    want = plain.logprobs(batch, with_entropy=True)
    _close_lists(got.logprobs, want.logprobs)
    _close_lists(got.entropy, want.entropy)
    g = torch.Generator().manual_seed(3)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [lp.detach() + 0.1 * torch.randn(lp.shape, generator=g) for lp in want.logprobs]
    old = [lp.detach() - 0.05 for lp in want.logprobs]
    loss = PolicyLossSettings(kl_coef=0.04, entropy_coef=0.01)
    m_shared = shared.train_step(PolicyMiniBatch(batch, old, adv, ref), loss)
    m_plain = plain.train_step(PolicyMiniBatch(batch, old, adv, ref), loss)
    for key in ("policy_loss", "kl_loss", "entropy", "ratio", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_plain[key], rel=1e-5, abs=1e-7), key
    start = Actor(_config(tiny_model_path, micro))
    _assert_same_weights(shared.engine.module, plain.engine.module, start.engine.module)


def test_critic_values_step_and_weights_equal_the_plain_layout(tiny_model_path):
    from services.critic.critic import Critic

    batch = _rows()
    shared, plain = _pair(Critic, tiny_model_path, 3)
    want = plain.values(batch)
    _close_lists(shared.values(batch), want)
    g = torch.Generator().manual_seed(4)
    returns = [v + torch.randn(v.shape, generator=g) for v in want]
    mb = ValueMiniBatch(batch, [v.clone() for v in want], returns)
    m_shared = shared.train_step(mb, ValueLossSettings())
    m_plain = plain.train_step(mb, ValueLossSettings())
    for key in ("value_loss", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_plain[key], rel=1e-5, abs=1e-7), key
    start = Critic(_config(tiny_model_path, 3))
    _assert_same_weights(shared.engine.module, plain.engine.module, start.engine.module)


def test_reference_scores_each_prompt_once_with_the_plain_log_probs(tiny_model_path):
    from quartet.engines.frozen_model import FrozenCausalLM
    from quartet.engines.scoring import response_logprobs

    ref = FrozenCausalLM(str(tiny_model_path), "float32", micro_batch_size=ROWS)
    plain = response_logprobs(ref.engine.logits, _rows(), ref.pad_id,
                              micro_batch_size=ROWS, with_entropy=True)
    seen = []
    # the reference scores from hidden states (a Llama: tests/ppo/test_chunked_step.py)
    hidden = ref.engine.hidden
    ref.engine.hidden = lambda b, start: seen.append(b.input_ids.shape[0]) or hidden(b, start)
    got = ref.logprobs(_rows(), with_entropy=True)
    assert seen == [4]  # one row per prompt
    _close_lists(got.logprobs, plain.logprobs)
    _close_lists(got.entropy, plain.entropy)


def test_flash_attention_and_packing_keep_the_plain_layout(tiny_model_path):
    from dataclasses import replace

    from quartet.data.shared_prefix import shares_prefix
    from services.actor.actor import Actor

    assert not shares_prefix("flash_attention_2") and shares_prefix("sdpa")
    cfg = _config(tiny_model_path, 3)
    packed = Actor(replace(cfg, ds=replace(cfg.ds, packing_samples=True)))
    assert not packed.updater.share_prefix
