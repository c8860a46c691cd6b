"""Summed response log-probs per sample, the quantity DPO, KTO and iterative DPO compare."""

from __future__ import annotations

import torch
from torch import Tensor

from quartet.algos.losses import token_logprobs
from quartet.data.batch import TokenBatch

__all__ = ["sequence_logp_stats", "sequence_logps"]


def sequence_logps(batch: TokenBatch, logits: Tensor, length_normalize: bool = False,
                   start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(per-sample sums [N], token log-probs [R, T-1-start], target mask [R, T-1-start])``.

    ``logits`` covers positions ``start..T-1`` (a forward with ``logits_from=start``, see
    `quartet.engines.scoring.response_start`). ``length_normalize`` divides each sum by the
    sample's target count (IPO's average).
    """
    labels, mask, sample_ids = (t[:, start:] for t in batch.shifted())
    device = logits.device
    logprobs = token_logprobs(logits[:, :-1], labels.to(device))
    mask, sample_ids = mask.to(device), sample_ids.to(device)
    on_device = batch.to(device)
    sums = on_device.per_sample_sum(logprobs, mask, sample_ids)
    if length_normalize:
        counts = on_device.per_sample_sum(torch.ones_like(logprobs), mask, sample_ids)
        sums = sums / counts.clamp(min=1.0)
    return sums, logprobs, mask & (sample_ids >= 0)


def sequence_logp_stats(batch: TokenBatch, logits: Tensor,
                        start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(per-sample summed log-probs [N], target token counts [N], per-sample mean
    log-probs [N])`` over the response targets; packing-safe. ``logits`` covers positions
    ``start..T-1``, as in :func:`sequence_logps`."""
    labels, mask, sample_ids = (t[:, start:] for t in batch.shifted())
    device = logits.device
    logprobs = token_logprobs(logits[:, :-1], labels.to(device))
    mask, sample_ids = mask.to(device), sample_ids.to(device)
    on_device = batch.to(device)
    means, counts = on_device.per_sample_mean(logprobs, mask, sample_ids)
    return on_device.per_sample_sum(logprobs, mask, sample_ids), counts, means
