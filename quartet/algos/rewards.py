"""From scalar reward-model scores to per-token PPO rewards.

InstructGPT-style RLHF (Ouyang et al. 2022; Stiennon et al. 2020) treats a response as a
token-level episode: every token pays ``-kl_coef * KL_t`` to stay near the reference policy,
and the reward model's scalar score arrives once, on the last (EOS) token. The OpenRLHF paper
lists both ("predict reward only on the end-of-text token", "token-level RL", "reward
normalization"). This module also holds the sequence-level reward adjustments that run before
the shaping: normalisation, clipping, combining several reward models, DAPO's overlong penalty
and the ProRL stop-properly penalty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from quartet.algos.masked import as_bool_mask

__all__ = [
    "RunningMeanStd",
    "clip_rewards",
    "combine_rewards",
    "last_token_index",
    "normalize_rewards",
    "overlong_penalty",
    "shape_rewards",
    "stop_properly_penalty",
]


def last_token_index(action_mask: Tensor) -> Tensor:
    """Index of the last valid token of each row of a ``[B, T]`` mask; -1 for an empty row.

    Works for right padding (``1 1 1 0 0``), left padding (``0 0 1 1 1``) and holes.
    """
    m = as_bool_mask(action_mask)
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=-1)


def clip_rewards(rewards: Tensor, clip_range: float | tuple[float, float]) -> Tensor:
    """Clamp rewards to ``[-c, c]`` (a float) or ``[low, high]`` (a pair)."""
    low, high = (-clip_range, clip_range) if isinstance(clip_range, int | float) else clip_range
    if low > high:
        raise ValueError(f"clip range low > high: ({low}, {high})")
    return rewards.clamp(min=low, max=high)


def shape_rewards(
    scalar_reward: Tensor,
    kl: Tensor | None,
    action_mask: Tensor,
    kl_coef: float,
    reward_clip: float | tuple[float, float] | None = None,
) -> Tensor:
    """Per-token rewards ``[B, T]``: ``-kl_coef * kl`` on every valid token, plus the scalar
    reward (clipped first when ``reward_clip`` is given) on the last valid token of each row.

    ``kl`` may be None (KL in the loss instead, or no KL at all). A ``kl_coef <= 0`` means no
    penalty (as in OpenRLHF): a negative coefficient never turns the penalty into a bonus.
    Masked positions are 0. A row with no valid token gets all zeros: its scalar reward has
    nowhere to go and is dropped.
    """
    m = as_bool_mask(action_mask)
    if scalar_reward.dim() != 1 or scalar_reward.shape[0] != m.shape[0]:
        raise ValueError(
            f"scalar_reward must be [B]={m.shape[0]}, got {tuple(scalar_reward.shape)}"
        )
    reward = scalar_reward if reward_clip is None else clip_rewards(scalar_reward, reward_clip)
    eos = last_token_index(m)
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    at_eos = positions == eos.unsqueeze(-1)  # an empty row has eos = -1: never matches
    dtype = torch.promote_types(reward.dtype, kl.dtype) if kl is not None else reward.dtype
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    token_rewards = torch.where(
        at_eos, reward.to(dtype).unsqueeze(-1), torch.zeros(m.shape, dtype=dtype, device=m.device)
    )
    if kl is not None and kl_coef > 0:
        token_rewards = token_rewards - kl_coef * torch.where(m, kl.to(dtype), 0.0)
    return token_rewards


def normalize_rewards(
    rewards: Tensor, mean: float | Tensor, std: float | Tensor, eps: float = 1e-8
) -> Tensor:
    """``(rewards - mean) / (std + eps)`` with externally supplied (e.g. running) statistics."""
    return (rewards - mean) / (std + eps)


class RunningMeanStd:
    """Running mean and variance of a stream of scalars, mergeable across workers.

    Uses the parallel update of Chan, Golub and LeVeque (1979), which is stable over long runs
    (no ``E[x^2] - E[x]^2`` cancellation). State is three Python floats in double precision.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def update(self, values: Tensor) -> None:
        """Fold every element of ``values`` into the statistics."""
        v = values.detach().to(torch.float64).flatten()
        n = v.numel()
        if n == 0:
            return
        mean = float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        self._merge(float(n), mean, m2)

    def merge(self, other: RunningMeanStd) -> None:
        """Fold another instance's statistics into this one."""
        self._merge(other.count, other.mean, other.m2)

    def _merge(self, n_b: float, mean_b: float, m2_b: float) -> None:
        if n_b == 0:
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    @property
    def var(self) -> float:
        """Population variance; 0 before any update."""
        return self.m2 / self.count if self.count > 0 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def normalize(self, values: Tensor, eps: float = 1e-8) -> Tensor:
        """Normalise ``values`` with the current statistics (see :func:`normalize_rewards`)."""
        return normalize_rewards(values, self.mean, self.std, eps)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


def combine_rewards(
    scores: Sequence[Tensor] | Tensor, weights: Sequence[float] | None = None
) -> Tensor:
    """Weighted sum of several reward models' scores: ``[K, B]`` (or K tensors of ``[B]``)
    to ``[B]``. Equal weights of 1 (a plain sum) when ``weights`` is None."""
    stacked = scores if isinstance(scores, Tensor) else torch.stack(list(scores))
    if stacked.dim() != 2:
        raise ValueError(f"scores must be [K, B], got {tuple(stacked.shape)}")
    if weights is None:
        return stacked.sum(dim=0)
    if len(weights) != stacked.shape[0]:
        raise ValueError(f"{len(weights)} weights for {stacked.shape[0]} reward models")
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    return (stacked * w.unsqueeze(-1)).sum(dim=0)


def overlong_penalty(
    response_lengths: Tensor,
    max_length: int,
    buffer_length: int,
    penalty_factor: float = 1.0,
) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13), to add to rewards.

    With ``L_exp = max_length - buffer_length``: 0 for ``len <= L_exp``, then falling linearly
    to ``-penalty_factor`` at ``len = max_length``, and ``-penalty_factor`` beyond.
    """
    if buffer_length <= 0 or buffer_length > max_length:
        raise ValueError(f"need 0 < buffer_length <= max_length, got {buffer_length}, {max_length}")
    expected = max_length - buffer_length
    exceed = (response_lengths.to(torch.float64) - expected).clamp(min=0.0, max=buffer_length)
    out = -exceed / buffer_length * penalty_factor
    dtype = response_lengths.dtype
    return out.to(dtype if dtype.is_floating_point else torch.get_default_dtype())


def stop_properly_penalty(rewards: Tensor, truncated: Tensor, coef: float) -> Tensor:
    """Penalise responses that hit the length limit instead of stopping (ProRL-style).

    ``coef`` in ``[0, 1]`` scales a truncated sample's reward by ``coef``; a negative ``coef``
    replaces it with the fixed value ``coef``. Untruncated samples are unchanged.
    """
    if coef > 1:
        raise ValueError(f"coef must be <= 1 (scale in [0, 1] or a negative fixed reward): {coef}")
    t = as_bool_mask(truncated)
    penalised = rewards * coef if coef >= 0 else torch.full_like(rewards, coef)
    return torch.where(t, penalised, rewards)
