"""Experience mini-batches as they travel to the actor and critic, and their padded views.

On the wire, per-token fields are ragged (one value per response token). The losses in
`quartet.algos` take right-padded `[B, T]` matrices over response tokens with an action mask;
`pad_response_values` is the one place that converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from quartet.algos.off_policy import ISCorrection
from quartet.codec.batches import RowBatch


@dataclass
class PolicyLossSettings:
    """The PPO policy objective; sent by the coordinator with every actor step."""

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float | None = None
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    reduction: str = "token_mean"
    temperature: float = 1.0
    old_logprobs_from_forward: bool = False
    """One-pass PPO: no old log-probs travel; the step's own forward gives them (detached).
    Exact only for the first update on the weights the rollout was scored with: one epoch
    and one mini-batch per iteration (`quartet.ppo.passes.old_logprobs_from_forward`)."""
    policy_loss_type: str = "ppo"
    is_correction: ISCorrection = field(default_factory=ISCorrection)
    """Correction of rollout vs actor log-probs (needs the rollout log-probs when enabled)."""
    kl_unbiased_gradient: bool = False
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the next-token loss on the mini-batch's pre-training rows."""

    def __post_init__(self) -> None:
        # `PolicyLossSettings(**asdict(other))` (and JSON) turn the nested value into a dict
        if isinstance(self.is_correction, dict):
            c = dict(self.is_correction)
            c["threshold"] = tuple(c.get("threshold", (0.5, 5.0)))
            self.is_correction = ISCorrection(**c)


@dataclass
class ValueLossSettings:
    clip_eps: float | None = 0.2


@dataclass
class PolicyMiniBatch:
    batch: RowBatch
    old_logprobs: list[torch.Tensor] | None
    """None with `PolicyLossSettings.old_logprobs_from_forward`."""
    advantages: list[torch.Tensor]
    ref_logprobs: list[torch.Tensor] | None = None
    rollout_logprobs: list[torch.Tensor] | None = None
    ptx: RowBatch | None = None
    """PPO-ptx pre-training rows, one per policy row (prompt length 1), or None."""

    def slice(self, start: int, end: int) -> PolicyMiniBatch:
        return PolicyMiniBatch(
            self.batch.slice(start, end),
            self.old_logprobs[start:end] if self.old_logprobs is not None else None,
            self.advantages[start:end],
            self.ref_logprobs[start:end] if self.ref_logprobs is not None else None,
            self.rollout_logprobs[start:end] if self.rollout_logprobs is not None else None,
            self.ptx.slice(start, end) if self.ptx is not None else None,
        )

    @staticmethod
    def concat(parts: Sequence[PolicyMiniBatch]) -> PolicyMiniBatch:
        def cat(name: str) -> list[torch.Tensor] | None:
            lists = [getattr(p, name) for p in parts]
            if any(v is None for v in lists):
                return None
            return [t for v in lists for t in v]

        ptx = None
        if all(p.ptx is not None for p in parts):
            ptx = RowBatch([r for p in parts for r in p.ptx.rows],
                           [n for p in parts for n in p.ptx.prompt_lengths])
        return PolicyMiniBatch(
            RowBatch([r for p in parts for r in p.batch.rows],
                       [n for p in parts for n in p.batch.prompt_lengths]),
            cat("old_logprobs"), cat("advantages") or [], cat("ref_logprobs"),
            cat("rollout_logprobs"), ptx,
        )


@dataclass
class ValueMiniBatch:
    batch: RowBatch
    old_values: list[torch.Tensor]
    returns: list[torch.Tensor]

    def slice(self, start: int, end: int) -> ValueMiniBatch:
        return ValueMiniBatch(self.batch.slice(start, end), self.old_values[start:end],
                              self.returns[start:end])

    @staticmethod
    def concat(parts: Sequence[ValueMiniBatch]) -> ValueMiniBatch:
        return ValueMiniBatch(
            RowBatch([r for p in parts for r in p.batch.rows],
                       [n for p in parts for n in p.batch.prompt_lengths]),
            [t for p in parts for t in p.old_values], [t for p in parts for t in p.returns],
        )


def pad_response_values(rows: Sequence[torch.Tensor], width: int | None = None,
                        fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-response-token values → right-padded [B, T] float32 and the bool mask."""
    width = width if width is not None else max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), fill, dtype=torch.float32)
    mask = torch.zeros((len(rows), max(width, 1)), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.float()
        mask[i, : r.numel()] = True
    return out, mask


def unpad_response_values(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [values[i][mask[i]].detach().float().cpu() for i in range(values.shape[0])]
