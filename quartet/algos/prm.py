"""Process reward model: a language model that scores each reasoning step by the token it
predicts after a step placeholder (Math-Shepherd's "ки" + "+"/"-" recipe, OpenRLHF's former
``ProcessRewardModelTrainer``).

At each placeholder position the logits are restricted to the reward tokens (e.g. ``+``, ``-``).
Hard labels (an index into the reward tokens) use cross-entropy over that restricted softmax;
soft labels (a probability that the step is good) use binary cross-entropy on the probability
of the first reward token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PRMLossOutput", "prm_loss", "step_probabilities"]


class PRMLossOutput(NamedTuple):
    """``loss`` scalar; ``accuracy`` of the argmax (hard labels) or of ``p >= 0.5`` against
    ``label >= 0.5`` (soft labels), detached; ``num_steps`` the placeholders counted."""

    loss: Tensor
    accuracy: Tensor
    num_steps: int


def _reward_logits(logits: Tensor, step_mask: Tensor, reward_token_ids: list[int]) -> Tensor:
    if len(reward_token_ids) < 2:
        raise ValueError(f"need at least two reward tokens, got {reward_token_ids}")
    ids = torch.tensor(reward_token_ids, device=logits.device)
    return logits[step_mask.bool()].float().index_select(-1, ids)  # [S, K]


def step_probabilities(logits: Tensor, step_mask: Tensor, reward_token_ids: list[int]) -> Tensor:
    """Probability of the first reward token ("good step") at each masked position: ``[S]``,
    in row-major order of ``step_mask``."""
    return torch.softmax(_reward_logits(logits, step_mask, reward_token_ids), dim=-1)[:, 0]


def prm_loss(logits: Tensor, step_mask: Tensor, step_labels: Tensor,
             reward_token_ids: list[int]) -> PRMLossOutput:
    """Mean over placeholder positions of the step loss.

    ``logits [B, T, V]`` at the placeholder positions ``step_mask [B, T]`` predict the step's
    reward token. ``step_labels [S]`` (one per masked position, row-major): integer indices into
    ``reward_token_ids`` (hard) or floats in [0, 1] = P(good) (soft).
    """
    z = _reward_logits(logits, step_mask, reward_token_ids)
    if z.shape[0] != step_labels.shape[0]:
        raise ValueError(f"{z.shape[0]} placeholder positions but {step_labels.shape[0]} labels")
    if z.shape[0] == 0:
        zero = logits.sum() * 0.0
        return PRMLossOutput(zero, zero.detach(), 0)
    if step_labels.is_floating_point():
        target = step_labels.to(z.device).float()
        margin = z[:, 0] - torch.logsumexp(z[:, 1:], dim=-1)  # logit of P(first token)
        loss = F.binary_cross_entropy_with_logits(margin, target)
        acc = ((margin >= 0) == (target >= 0.5)).float().mean()
    else:
        target = step_labels.to(z.device).long()
        loss = F.cross_entropy(z, target)
        acc = (z.argmax(dim=-1) == target).float().mean()
    return PRMLossOutput(loss, acc.detach(), int(z.shape[0]))
