"""Per-token KL estimators and KL-coefficient controllers.

Estimators follow John Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). Tokens are sampled from the current policy ``q``; with
``r = p_ref(x) / q(x)``, i.e. ``log r = ref_logprobs - logprobs``, the estimators of
``KL(q || p_ref)`` are

- ``k1 = -log r``            unbiased, high variance, can be negative per token;
- ``k2 = (log r)^2 / 2``     biased, low variance, always >= 0;
- ``k3 = (r - 1) - log r``   unbiased, low variance, always >= 0.

The controllers follow Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences" (section 2.2): the KL coefficient ``beta`` is adapted so that the observed KL
tracks a target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from quartet.algos.masked import as_bool_mask

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "approx_kl",
]

KL_ESTIMATORS = ("k1", "k2", "k3")

# OpenRLHF 0.11 clamps every per-token estimate to [-10, 10]; so does quartet. For k3 it also
# bounds the exponent from above before exp (log r <= 10; OpenRLHF writes it as a lower clamp of
# its log pi - log p_ref): exp(10) ~ 2.2e4 is finite even in fp16, so a token on which the models
# disagree wildly cannot give inf forward or 0 * inf = NaN backward. The other side is left
# alone: at log r = -40, k3 = 39 and the output clamp makes it 10, as in OpenRLHF.
KL_CLAMP = 10.0


def approx_kl(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: str = "k1",
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token estimate of ``KL(policy || reference)``, shaped like ``logprobs``.

    Each estimate is clamped to ``[-10, 10]`` (as OpenRLHF 0.11 does), bounding what one token
    can contribute; for ``k3`` the exponent ``log r`` is also capped at 10 *before* ``exp`` (as
    OpenRLHF 0.11 does) so the exponential can never overflow to ``inf`` (and give NaN
    gradients). Neither clamp binds in normal training. Masked positions are 0, and are zeroed
    before ``exp`` too.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")
    log_ratio = ref_logprobs - logprobs  # log r = log p_ref - log q
    if mask is not None:
        m = as_bool_mask(mask)
        log_ratio = torch.where(m, log_ratio, torch.zeros_like(log_ratio))
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    else:
        log_ratio = log_ratio.clamp(max=KL_CLAMP)
        kl = torch.expm1(log_ratio) - log_ratio
    kl = kl.clamp(-KL_CLAMP, KL_CLAMP)
    if mask is not None:
        kl = torch.where(m, kl, torch.zeros_like(kl))
    return kl


class FixedKLController:
    """A constant KL coefficient; ``update`` is a no-op (same interface as the adaptive one)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Return the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 proportional controller for the KL coefficient.

    After each batch: ``e = clip(KL / target - 1, -0.2, 0.2)`` and
    ``beta <- beta * (1 + e * n_steps / horizon)``, where ``n_steps`` is the number of samples
    (episodes) in the batch and ``horizon`` sets how fast beta reacts (the paper uses 10000).
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt the coefficient to the KL measured over ``n_steps`` samples; return it."""
        error = current_kl / self.target - 1.0
        error = min(max(error, -self.ERROR_CLIP), self.ERROR_CLIP)
        # n_steps > 5 * horizon could make the factor negative; a coefficient never flips sign.
        self.value *= max(1.0 + error * n_steps / self.horizon, 0.0)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
