"""Advantage estimators: GAE with a critic, and critic-free REINFORCE-family baselines.

Token-level functions (``gae``, ``reinforce``) take ``[B, T]`` per-token rewards (see
:func:`quartet.algos.rewards.shape_rewards`) and an action mask. Group functions
(``reinforce_baseline``, ``rloo``, ``group_norm``, ``dr_grpo``) take the ``[num_prompts * n]``
scalar rewards, samples of one prompt contiguous, and return baseline-corrected scalars that
:func:`compute_advantages` then places on the EOS token and turns into returns-to-go.

Masked positions are *skipped*, not treated as time steps: the "next" value or advantage of a
token is that of the next valid token of the row, and after the last valid token everything
bootstraps to 0 (the episode ends at EOS). For left/right padding this is the ordinary
recursion; for a hole inside a row it steps over the hole. Masked positions output 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from quartet.algos.masked import as_bool_mask
from quartet.algos.rewards import clip_rewards, shape_rewards

__all__ = [
    "ESTIMATORS",
    "WHITENED_ESTIMATORS",
    "AdvantagesAndReturns",
    "compute_advantages",
    "discounted_returns",
    "dr_grpo",
    "flash_reinforce",
    "gae",
    "group_norm",
    "reinforce",
    "reinforce_baseline",
    "rloo",
]

ESTIMATORS = ("gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo",
              "flash_reinforce")

# Estimators whose advantages OpenRLHF whitens over the whole batch afterwards (with global
# statistics, see quartet.algos.masked.masked_whiten). The group estimators are already
# normalised per prompt and are left alone; so is flash_reinforce (batch-mean baseline only).
WHITENED_ESTIMATORS = frozenset({"gae", "reinforce", "reinforce_baseline"})


class AdvantagesAndReturns(NamedTuple):
    """Token-level advantages and returns, both ``[B, T]`` and 0 at masked positions."""

    advantages: Tensor
    returns: Tensor


def _check_token_shapes(action_mask: Tensor, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != action_mask.shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} != action_mask shape {tuple(action_mask.shape)}"
            )


def gae(
    rewards: Tensor, values: Tensor, action_mask: Tensor, gamma: float, lam: float
) -> AdvantagesAndReturns:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation").

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V`` and ``A`` after the last valid token equal to 0, and ``returns = A + V`` (the critic's
    regression target). Inputs are usually detached experience; no grad is needed.
    """
    _check_token_shapes(action_mask, rewards=rewards, values=values)
    m = as_bool_mask(action_mask)
    batch, length = m.shape
    zero = torch.zeros(batch, dtype=values.dtype, device=values.device)
    next_value, next_adv = zero, zero
    advantages: list[Tensor] = [zero] * length
    for t in reversed(range(length)):
        valid = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[t] = torch.where(valid, adv, zero)
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv, next_adv)
    adv_bt = torch.stack(advantages, dim=1)
    returns = torch.where(m, adv_bt + values, torch.zeros_like(adv_bt))
    return AdvantagesAndReturns(adv_bt, returns)


def discounted_returns(rewards: Tensor, action_mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go ``G_t = r_t + gamma * G_{t+1}`` over valid tokens (0 after the last)."""
    _check_token_shapes(action_mask, rewards=rewards)
    m = as_bool_mask(action_mask)
    batch, length = m.shape
    zero = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    running = zero
    out: list[Tensor] = [zero] * length
    for t in reversed(range(length)):
        valid = m[:, t]
        running = torch.where(valid, rewards[:, t] + gamma * running, running)
        out[t] = torch.where(valid, running, zero)
    return torch.stack(out, dim=1)


def reinforce(rewards: Tensor, action_mask: Tensor, gamma: float = 1.0) -> AdvantagesAndReturns:
    """REINFORCE (Williams 1992): the advantage is the discounted return-to-go itself."""
    returns = discounted_returns(rewards, action_mask, gamma)
    return AdvantagesAndReturns(returns, returns)


def _grouped(rewards: Tensor, n_samples_per_prompt: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"group rewards must be 1-D [num_prompts * n], got {tuple(rewards.shape)}")
    if n_samples_per_prompt < 1 or rewards.numel() % n_samples_per_prompt != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of "
            f"n_samples_per_prompt={n_samples_per_prompt}"
        )
    return rewards.view(-1, n_samples_per_prompt)


def _zero_constant_groups(grouped: Tensor, advantages: Tensor) -> Tensor:
    """Exactly 0 for a group whose rewards are all equal (mean-subtraction of e.g. three 0.1s
    leaves ~1e-17 rounding residue, which std-division would blow up); flattened to [B]."""
    constant = grouped.amax(dim=-1, keepdim=True) == grouped.amin(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(advantages), advantages).reshape(-1)


def reinforce_baseline(rewards: Tensor, n_samples_per_prompt: int) -> Tensor:
    """REINFORCE++-baseline (Hu 2025, "REINFORCE++"): subtract the prompt group's mean reward.

    The result is then shaped, turned into returns and whitened over the whole batch.
    """
    g = _grouped(rewards, n_samples_per_prompt)
    return _zero_constant_groups(g, g - g.mean(dim=-1, keepdim=True))


def rloo(rewards: Tensor, n_samples_per_prompt: int) -> Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"):
    ``r_i - mean_{j != i} r_j``, which equals ``n / (n - 1) * (r_i - mean)``. Needs n >= 2."""
    if n_samples_per_prompt < 2:
        raise ValueError(f"rloo needs n_samples_per_prompt >= 2, got {n_samples_per_prompt}")
    g = _grouped(rewards, n_samples_per_prompt)
    baseline = (g.sum(dim=-1, keepdim=True) - g) / (n_samples_per_prompt - 1)
    return _zero_constant_groups(g, g - baseline)


def group_norm(
    rewards: Tensor, n_samples_per_prompt: int, eps: float = 1e-6, unbiased: bool = True
) -> Tensor:
    """GRPO's group-normalised advantage (Shao et al. 2024, "DeepSeekMath"):
    ``(r - mean_group) / (std_group + eps)``.

    ``unbiased`` uses the n-1 standard deviation (``torch.std``'s default, as OpenRLHF).
    A group whose rewards are all equal (including n = 1) gets exactly 0, never NaN/inf (so do
    the other group estimators).
    """
    g = _grouped(rewards, n_samples_per_prompt)
    centred = g - g.mean(dim=-1, keepdim=True)
    if n_samples_per_prompt == 1:
        return torch.zeros_like(rewards)
    std = g.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    return _zero_constant_groups(g, centred / (std + eps))


def dr_grpo(rewards: Tensor, n_samples_per_prompt: int) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): the group mean is
    subtracted but the result is not divided by the group std (which biases toward
    too-easy/too-hard prompts). Pair it with the ``seq_mean_token_sum_norm`` loss reduction."""
    g = _grouped(rewards, n_samples_per_prompt)
    return _zero_constant_groups(g, g - g.mean(dim=-1, keepdim=True))


def flash_reinforce(rewards: Tensor, n_samples_per_prompt: int = 1) -> Tensor:
    """FlashREINFORCE (OpenRLHF 0.11's ``flash_reinforce``): the reward minus the mean reward of
    the whole rollout batch, no group and no std division; made for one sample per prompt and
    paired with a sequence-level IS trust region and the ``sequence_mean`` reduction.
    ``n_samples_per_prompt`` is ignored (the baseline spans every prompt). A batch whose
    rewards are all equal gets exactly 0."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got {tuple(rewards.shape)}")
    return _zero_constant_groups(rewards.view(1, -1), rewards - rewards.mean())


_GROUP_ESTIMATORS = {
    "flash_reinforce": flash_reinforce,
    "reinforce_baseline": reinforce_baseline,
    "rloo": rloo,
    "group_norm": group_norm,
    "dr_grpo": dr_grpo,
}


def compute_advantages(
    estimator: str,
    rewards: Tensor,
    action_mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    n_samples_per_prompt: int = 1,
    reward_clip: float | tuple[float, float] | None = None,
) -> AdvantagesAndReturns:
    """One entry point from scalar rewards ``[B]`` to token-level advantages and returns.

    0. ``reward_clip`` clamps the raw scalar rewards (before any baseline);
    1. group estimators replace each scalar reward with its baseline-corrected value;
    2. :func:`~quartet.algos.rewards.shape_rewards` puts it on the EOS token and subtracts
       ``kl_coef * kl`` per token (KL in reward; pass ``kl=None`` for KL in the loss);
    3. ``gae`` runs GAE with ``values``; every other estimator uses the discounted
       return-to-go as advantage and return.

    Whitening (for :data:`WHITENED_ESTIMATORS`) is a separate step, because it needs
    statistics over every replica: see :func:`quartet.algos.masked.masked_whiten`.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}"
        )
    if reward_clip is not None:
        rewards = clip_rewards(rewards, reward_clip)
    if estimator in _GROUP_ESTIMATORS:
        rewards = _GROUP_ESTIMATORS[estimator](rewards, n_samples_per_prompt)
    token_rewards = shape_rewards(rewards, kl, action_mask, kl_coef)
    if estimator == "gae":
        if values is None:
            raise ValueError("estimator 'gae' needs values from the critic")
        return gae(token_rewards, values.to(token_rewards.dtype), action_mask, gamma, lam)
    return reinforce(token_rewards, action_mask, gamma)
