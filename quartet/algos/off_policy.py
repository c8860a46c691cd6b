"""Importance-sampling correction for off-policy rollouts (OpenRLHF 0.11's ``is_correction_*``).

The rollout engine (vLLM) samples with probabilities ``pi_rollout`` that differ from the
trainer's ``pi_old`` (numerics, fp8/bf16 kernels, stale weights in async runs). Per token the
ratio ``w = pi_old / pi_rollout`` measures the mismatch. A *gate* reads one statistic per unit
and drops (``mask``) or clamps (``clip``) units whose statistic leaves ``[low, high]``:

- ``level``: the unit is a token (``token``) or a whole response (``seq``);
- ``gating``: the statistic is the ratio itself (``ratio``; at sequence level its geometric
  mean ``exp(mean_t log w)``), or a divergence between the two policies on the sampled token,
  seen as a Bernoulli: ``binary_kl = p log(p/q) + (1-p) log((1-p)/(1-q))`` or ``tv = |p - q|``
  with ``p = pi_rollout``, ``q = pi_old`` (both clamped to ``[1e-6, 1 - 1e-6]``; at sequence
  level the plain mean over tokens). A divergence is a trust region: it takes an upper bound
  only (``low = 0``).
- ``mode``: ``mask`` multiplies the per-token loss of a kept unit by its token ratio ``w`` and
  of a dropped unit by 0 (ICEPOP; at sequence level seq-mask-TIS / FlashREINFORCE's sequence
  trust region); ``clip`` multiplies it by ``clamp(w, low, high)`` (TIS, Yao et al. 2025,
  "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training") and exists for
  token-level ratio gating only.

Metrics: ``vllm_kl`` is the k1 estimate ``mean(log pi_rollout - log pi_old)`` over valid tokens,
``is_filter_ratio`` the fraction of units outside the band (tokens, or sequences at ``seq``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from quartet.algos.masked import as_bool_mask, masked_mean

__all__ = [
    "IS_CORRECTION_GATINGS",
    "IS_CORRECTION_LEVELS",
    "IS_CORRECTION_MODES",
    "ISCorrection",
    "ISCorrectionOutput",
    "is_correction_coefficients",
]

IS_CORRECTION_LEVELS = ("off", "token", "seq")
IS_CORRECTION_MODES = ("mask", "clip")
IS_CORRECTION_GATINGS = ("ratio", "binary_kl", "tv")

# Probabilities are clamped into (0, 1) before the Bernoulli divergences so their logs stay finite.
_PROB_EPS = 1e-6
# exp of a log-ratio beyond this is clamped: a kept token's weight stays finite in fp32.
_LOG_W_CLAMP = 20.0


@dataclass(frozen=True)
class ISCorrection:
    """How to correct for the rollout/trainer mismatch; ``level="off"`` disables it.

    ``threshold`` is ``(low, high)``; a single number means ``(0, high)`` (an upper bound only).
    Defaults are OpenRLHF 0.11's: mask mode, ratio gating, band ``[0.5, 5.0]``.
    """

    level: str = "off"
    mode: str = "mask"
    gating: str = "ratio"
    threshold: tuple[float, float] = (0.5, 5.0)

    def __post_init__(self) -> None:
        if self.level not in IS_CORRECTION_LEVELS:
            raise ValueError(f"is_correction_level must be one of {', '.join(IS_CORRECTION_LEVELS)}"
                             f", got {self.level!r}")
        if self.mode not in IS_CORRECTION_MODES:
            raise ValueError(f"is_correction_mode must be one of {', '.join(IS_CORRECTION_MODES)}"
                             f", got {self.mode!r}")
        if self.gating not in IS_CORRECTION_GATINGS:
            raise ValueError(f"is_correction_gating must be one of "
                             f"{', '.join(IS_CORRECTION_GATINGS)}, got {self.gating!r}")
        low, high = normalize_threshold(self.threshold)
        object.__setattr__(self, "threshold", (low, high))
        if low > high:
            raise ValueError(f"is_correction_threshold: low {low} > high {high}")
        if self.mode == "clip" and (self.level == "seq" or self.gating != "ratio"):
            raise ValueError("is_correction_mode clip needs is_correction_level token and "
                             "is_correction_gating ratio (only a per-token ratio is a weight "
                             "that can be clamped; anything else is a rejection filter)")
        if self.enabled and self.gating != "ratio" and low > 0:
            raise ValueError(f"is_correction_gating {self.gating} takes an upper bound only "
                             f"(a single delta), got the band [{low}, {high}]")

    @property
    def enabled(self) -> bool:
        return self.level != "off"


def normalize_threshold(threshold: float | tuple[float, ...] | list[float]) -> tuple[float, float]:
    """``x`` or ``(x,)`` -> ``(0, x)``; ``(low, high)`` unchanged."""
    if isinstance(threshold, int | float):
        return 0.0, float(threshold)
    values = [float(v) for v in threshold]
    if len(values) == 1:
        return 0.0, values[0]
    if len(values) != 2:
        raise ValueError(f"is_correction_threshold takes HIGH or LOW HIGH, got {values}")
    return values[0], values[1]


class ISCorrectionOutput(NamedTuple):
    """``coef`` multiplies the per-token loss (detached, 0 at padding); metrics are detached."""

    coef: Tensor
    vllm_kl: Tensor
    is_filter_ratio: Tensor


def _bernoulli_divergence(old_logprobs: Tensor, rollout_logprobs: Tensor, gating: str) -> Tensor:
    p = rollout_logprobs.exp().clamp(_PROB_EPS, 1 - _PROB_EPS)
    q = old_logprobs.exp().clamp(_PROB_EPS, 1 - _PROB_EPS)
    if gating == "tv":
        return (p - q).abs()
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


@torch.no_grad()
def is_correction_coefficients(
    old_logprobs: Tensor, rollout_logprobs: Tensor, action_mask: Tensor, cfg: ISCorrection
) -> ISCorrectionOutput:
    """Per-token loss coefficients ``[B, T]`` and the ``vllm_kl`` / ``is_filter_ratio`` metrics.

    See the module docstring for the math. Padding is zeroed before any ``exp``.
    """
    if not cfg.enabled:
        raise ValueError("is_correction_coefficients called with is_correction_level off")
    m = as_bool_mask(action_mask)
    zeros = torch.zeros_like(old_logprobs)
    old = torch.where(m, old_logprobs, zeros)
    rollout = torch.where(m, rollout_logprobs, zeros)
    low, high = cfg.threshold
    seq_level = cfg.level == "seq"
    log_w = old - rollout  # log(pi_old / pi_rollout)
    token_w = log_w.clamp(-_LOG_W_CLAMP, _LOG_W_CLAMP).exp()
    if cfg.gating == "ratio":
        if seq_level:
            stat = masked_mean(log_w, m, dim=-1, keepdim=True).clamp(-_LOG_W_CLAMP, _LOG_W_CLAMP)
            stat = stat.exp()
        else:
            stat = token_w
    else:
        stat = _bernoulli_divergence(old, rollout, cfg.gating)
        if seq_level:
            stat = masked_mean(stat, m, dim=-1, keepdim=True)
    if cfg.mode == "clip":
        coef = stat.clamp(low, high)
        filtered = (stat < low) | (stat > high)
    else:
        keep = (stat >= low) & (stat <= high)
        coef = torch.where(keep, token_w, zeros)
        filtered = ~keep
    coef = torch.where(m, coef.expand_as(old), zeros)
    if seq_level:
        rows = m.any(dim=-1)
        is_filter_ratio = masked_mean(filtered.squeeze(-1).float(), rows)
    else:
        is_filter_ratio = masked_mean(filtered.float(), m)
    vllm_kl = masked_mean(rollout - old, m)
    return ISCorrectionOutput(coef, vllm_kl, is_filter_ratio)
