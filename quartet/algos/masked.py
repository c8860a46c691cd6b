"""Masked reductions and whitening over token-level tensors.

Every token-level tensor in :mod:`quartet.algos` is shaped ``[batch, T]`` over response
tokens, with a mask (bool or 0/1 float) marking the valid ones. Padding may sit on either side.

Why ``torch.where`` and not ``values * mask``: a padded position may hold ``inf`` or ``NaN``
(e.g. a log-probability of a padding label), and ``inf * 0`` is ``NaN``. Selecting with
``where`` keeps masked positions out of the forward value entirely, and their gradient is 0.

A fully masked row (or tensor) reduces to 0 rather than ``0 / 0 = NaN``; see
``docs/algorithms.md`` ("Deliberate differences").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GlobalMoments",
    "as_bool_mask",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
]


def as_bool_mask(mask: Tensor) -> Tensor:
    """Return ``mask`` as a bool tensor (0/1 floats or ints become ``mask != 0``)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(
    values: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False
) -> Tensor:
    """Sum of ``values`` where ``mask`` is set; over everything when ``dim`` is None."""
    selected = torch.where(as_bool_mask(mask), values, torch.zeros_like(values))
    if dim is None:
        return selected.sum()
    return selected.sum(dim=dim, keepdim=keepdim)


def _count(values: Tensor, mask: Tensor, dim: int | None, keepdim: bool) -> Tensor:
    ones = torch.ones_like(values)
    return masked_sum(ones, mask, dim=dim, keepdim=keepdim)


def masked_mean(
    values: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False
) -> Tensor:
    """Mean of ``values`` over masked positions; 0 (not NaN) where nothing is masked in.

    The count is clamped to at least 1, so an empty row gives ``0 / 1 = 0`` and its gradient
    is a well-defined 0.
    """
    total = masked_sum(values, mask, dim=dim, keepdim=keepdim)
    count = _count(values, mask, dim, keepdim)
    return total / count.clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Variance of all masked-in elements (population variance unless ``unbiased``)."""
    mean = masked_mean(values, mask)
    sq = masked_sum((values - mean) ** 2, mask)
    count = _count(values, mask, None, False)
    denom = count - 1.0 if unbiased else count
    return sq / denom.clamp(min=1.0)


@dataclass(frozen=True)
class GlobalMoments:
    """Mergeable first and second moments: ``(sum, sum of squares, count)`` in float64.

    Whitening advantages with statistics of the whole rollout batch, not of each replica's
    shard, is one of the PPO tricks the OpenRLHF paper lists ("distributed advantage
    normalization with global statistics"). The three numbers add across shards, so one
    ``all_reduce(SUM)`` of :meth:`to_tensor` (or :meth:`merge` of gathered values) gives the
    global moments. Sums are kept in float64; the variance ``E[x^2] - E[x]^2`` is clamped at 0.
    """

    total: float = 0.0
    total_sq: float = 0.0
    count: float = 0.0

    @classmethod
    def from_values(cls, values: Tensor, mask: Tensor | None = None) -> GlobalMoments:
        """Moments of the masked-in elements of ``values`` (all elements when mask is None)."""
        v = values.detach().to(torch.float64)
        if mask is None:
            mask = torch.ones_like(v, dtype=torch.bool)
        m = as_bool_mask(mask)
        return cls(
            total=float(masked_sum(v, m)),
            total_sq=float(masked_sum(v * v, m)),
            count=float(m.sum()),
        )

    @classmethod
    def from_tensor(cls, packed: Tensor) -> GlobalMoments:
        """Inverse of :meth:`to_tensor` (e.g. after an all-reduce)."""
        total, total_sq, count = (float(x) for x in packed.detach().to(torch.float64).tolist())
        return cls(total=total, total_sq=total_sq, count=count)

    def to_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """Pack as a float64 ``[3]`` tensor, ready for ``all_reduce(op=SUM)``."""
        return torch.tensor(
            [self.total, self.total_sq, self.count], dtype=torch.float64, device=device
        )

    def merge(self, other: GlobalMoments) -> GlobalMoments:
        """Moments of the union of both sets of elements."""
        return GlobalMoments(
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            count=self.count + other.count,
        )

    __add__ = merge

    @property
    def mean(self) -> float:
        """Mean of the elements; 0 when there are none."""
        return self.total / self.count if self.count > 0 else 0.0

    @property
    def var(self) -> float:
        """Population variance of the elements; 0 when there are none."""
        if self.count <= 0:
            return 0.0
        return max(self.total_sq / self.count - self.mean**2, 0.0)

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.var)


def masked_whiten(
    values: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    moments: GlobalMoments | None = None,
    divide_by_std: bool = True,
) -> Tensor:
    """Normalise ``values`` over the mask: ``(x - mean) / sqrt(var + eps)``.

    Population variance, as OpenRLHF's advantage normalisation. ``shift_mean=False`` keeps the
    mean (only divides by the standard deviation); ``divide_by_std=False`` only subtracts the
    mean (OpenRLHF's ``no_std_norm``). Pass ``moments`` (e.g. the merge of every replica's
    :class:`GlobalMoments`) to use global statistics instead of this tensor's own. Masked
    positions come out as 0. Statistics are constants: no gradient flows through them.
    """
    m = as_bool_mask(mask)
    if moments is None:
        moments = GlobalMoments.from_values(values, m)
    out = values - moments.mean if shift_mean else values
    if divide_by_std:
        out = out * (1.0 / math.sqrt(moments.var + eps))
    return torch.where(m, out, torch.zeros_like(out))
