"""KTO: Kahneman-Tversky optimisation (Ethayarajh et al. 2024, "KTO: Model Alignment as
Prospect Theoretic Optimization"), on summed sequence log-probs.

Why a separate module: KTO learns from *unpaired* binary feedback (each response is desirable or
undesirable on its own), so its inputs differ from DPO's pairs. The reference point ``z0`` is an
estimate of ``KL(policy || reference)`` taken on mismatched (prompt, response) pairs, clamped at
0 and detached (the paper does not backpropagate through it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["KTOLossOutput", "kto_kl_estimate", "kto_loss", "vanilla_kto_loss"]


class KTOLossOutput(NamedTuple):
    """``loss`` scalar; implicit rewards ``beta * (policy - ref)`` per sample and the reference
    point ``kl`` used, all detached."""

    loss: Tensor
    desirable_rewards: Tensor
    undesirable_rewards: Tensor
    kl: Tensor


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """``max(0, mean(policy - ref))`` over mismatched pairs, detached: KTO's ``z0``.

    Callers training on several ranks should average it over ranks before :func:`kto_loss`
    (the paper estimates it over the whole batch).
    """
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def _losses(logratios: Tensor, kl: Tensor, beta: float, desirable: bool) -> Tensor:
    inside = logratios - kl if desirable else kl - logratios
    return 1.0 - torch.sigmoid(beta * inside)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLossOutput:
    """KTO loss, mean over samples of the batch.

    With ``r = policy - ref`` (summed response log-probs) and reference point ``kl``:
    desirable samples lose ``w_d * (1 - sigmoid(beta * (r - kl)))``, undesirable ones
    ``w_u * (1 - sigmoid(beta * (kl - r)))``. ``desirable`` is a bool ``[B]``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError("desirable/undesirable weights must be >= 0")
    desirable = desirable.bool()
    logratios = policy_logps - ref_logps
    per_sample = torch.where(
        desirable,
        desirable_weight * _losses(logratios, kl, beta, True),
        undesirable_weight * _losses(logratios, kl, beta, False),
    )
    rewards = (beta * logratios).detach()
    loss = per_sample.mean() if per_sample.numel() else policy_logps.sum() * 0.0
    return KTOLossOutput(loss, rewards[desirable], rewards[~desirable], kl.detach())


def vanilla_kto_loss(
    policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, beta: float
) -> KTOLossOutput:
    """The paper's first formulation on a batch that holds both kinds: no mismatched pairs; the
    reference point of each side is the (clamped, detached) mean log-ratio of the *other* side.

    Desirable: ``1 - sigmoid(beta * (r - KL_u))``; undesirable: ``1 - sigmoid(beta * (KL_d -
    r))``, with ``KL_d``/``KL_u`` the mean log-ratios of desirable/undesirable samples.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    desirable = desirable.bool()
    logratios = policy_logps - ref_logps
    if not bool(desirable.any()) or bool(desirable.all()):
        raise ValueError("vanilla KTO needs desirable and undesirable samples in every batch "
                         "(paired data; see --model.vanilla_loss)")
    kl_d = logratios[desirable].mean().clamp(min=0).detach()
    kl_u = logratios[~desirable].mean().clamp(min=0).detach()
    per_sample = torch.where(desirable, _losses(logratios, kl_u, beta, True),
                             _losses(logratios, kl_d, beta, False))
    rewards = (beta * logratios).detach()
    return KTOLossOutput(per_sample.mean(), rewards[desirable], rewards[~desirable],
                         torch.stack([kl_d, kl_u]).mean())
