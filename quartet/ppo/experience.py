"""From scored samples to PPO experience: KL, shaped rewards, advantages, returns.

Everything here is coordinator-side math over the whole rollout batch, which is why
whitening uses *global* statistics: the coordinator sees every replica's samples.
The formulas live in `quartet.algos`; this module only arranges tensors for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quartet.algos.advantages import WHITENED_ESTIMATORS, compute_advantages
from quartet.algos.kl import approx_kl
from quartet.algos.masked import masked_mean, masked_whiten
from quartet.codec.batches import RowBatch
from quartet.ppo.batch import PolicyMiniBatch, ValueMiniBatch, pad_response_values


@dataclass
class AdvantageSettings:
    estimator: str = "gae"
    gamma: float = 1.0
    lam: float = 0.95
    n_samples_per_prompt: int = 1
    kl_coef: float = 0.0
    """KL penalty coefficient in the reward (0 when the KL is in the loss)."""
    kl_estimator: str = "k1"
    reward_clip: float | None = None
    whiten: bool = True
    no_std_norm: bool = False
    """Whitening subtracts the mean only (OpenRLHF's --algo.advantage.no_std_norm)."""


@dataclass
class Experience:
    """One rollout batch, scored: everything the actor and critic updates need."""

    batch: RowBatch
    rollout_logprobs: list[torch.Tensor] | None
    old_logprobs: list[torch.Tensor] | None
    """None in one-pass PPO: the actor's training forward gives them."""
    ref_logprobs: list[torch.Tensor] | None
    values: list[torch.Tensor] | None
    rewards: torch.Tensor  # [B] scalar reward per sample (after combination/normalisation)
    advantages: list[torch.Tensor]
    returns: list[torch.Tensor]
    kl: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.batch)

    def policy_minibatch(self, index: list[int]) -> PolicyMiniBatch:
        return PolicyMiniBatch(
            RowBatch([self.batch.rows[i] for i in index],
                       [self.batch.prompt_lengths[i] for i in index]),
            [self.old_logprobs[i] for i in index] if self.old_logprobs is not None else None,
            [self.advantages[i] for i in index],
            [self.ref_logprobs[i] for i in index] if self.ref_logprobs is not None else None,
            [self.rollout_logprobs[i] for i in index]
            if self.rollout_logprobs is not None else None,
        )

    def value_minibatch(self, index: list[int]) -> ValueMiniBatch:
        assert self.values is not None, "no critic values in this experience"
        return ValueMiniBatch(
            RowBatch([self.batch.rows[i] for i in index],
                       [self.batch.prompt_lengths[i] for i in index]),
            [self.values[i] for i in index], [self.returns[i] for i in index],
        )


def make_experience(
    batch: RowBatch,
    old_logprobs: list[torch.Tensor] | None,
    ref_logprobs: list[torch.Tensor] | None,
    values: list[torch.Tensor] | None,
    rewards: torch.Tensor,
    settings: AdvantageSettings,
    rollout_logprobs: list[torch.Tensor] | None = None,
) -> Experience:
    """`old_logprobs=None` (one-pass PPO) needs `settings.kl_coef == 0`; the KL kept for
    statistics then uses the sampler's log-probs when there are any."""
    policy = old_logprobs
    if policy is None:
        if settings.kl_coef:
            raise ValueError("old_logprobs: needed for a KL penalty in the reward")
        policy = rollout_logprobs if rollout_logprobs is not None else [
            torch.zeros(n) for n in batch.response_lengths()]
    old, mask = pad_response_values(policy)
    if ref_logprobs is not None and (old_logprobs is not None or rollout_logprobs is not None):
        ref, _ = pad_response_values(ref_logprobs, old.shape[1])
        kl = approx_kl(old, ref, settings.kl_estimator, mask)
    else:
        kl = torch.zeros_like(old)
    vals = pad_response_values(values, old.shape[1])[0] if values is not None else None
    result = compute_advantages(
        settings.estimator, rewards.float(), mask, kl=kl, kl_coef=settings.kl_coef,
        values=vals, gamma=settings.gamma, lam=settings.lam,
        n_samples_per_prompt=settings.n_samples_per_prompt, reward_clip=settings.reward_clip,
    )
    advantages = result.advantages
    if settings.whiten and settings.estimator in WHITENED_ESTIMATORS:
        advantages = masked_whiten(advantages, mask, divide_by_std=not settings.no_std_norm)
    split = [int(n) for n in mask.sum(dim=1).tolist()]
    return Experience(
        batch=batch, rollout_logprobs=rollout_logprobs, old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs, values=values, rewards=rewards,
        advantages=[advantages[i, :n].clone() for i, n in enumerate(split)],
        returns=[result.returns[i, :n].clone() for i, n in enumerate(split)],
        kl=[kl[i, :n].clone() for i, n in enumerate(split)],
    )


def experience_stats(exp: Experience) -> dict[str, float]:
    adv, mask = pad_response_values(exp.advantages)
    ret, _ = pad_response_values(exp.returns, adv.shape[1])
    kl, _ = pad_response_values(exp.kl, adv.shape[1])
    lengths = torch.tensor([float(n) for n in exp.batch.response_lengths()])
    per_seq_kl = (kl * mask).sum(dim=1)
    extra: dict[str, float] = {}
    if exp.rollout_logprobs is not None and exp.old_logprobs is not None:
        # How far the sampler's log-probs are from the actor's on the same tokens: ~0 when
        # weight sync works (numerics only); large when rollout serves stale weights.
        old, _ = pad_response_values(exp.old_logprobs, adv.shape[1])
        roll, _ = pad_response_values(exp.rollout_logprobs, adv.shape[1])
        extra["rollout_logprob_diff"] = float(masked_mean((old - roll).abs(), mask))
    return {
        **extra,
        "reward": float(exp.rewards.float().mean()),
        "kl": float(per_seq_kl.mean()),
        "kl_per_token": float(masked_mean(kl, mask)),
        "return": float(masked_mean(ret, mask)),
        "advantage_abs": float(masked_mean(adv.abs(), mask)),
        "response_length": float(lengths.mean()),
    }
