"""Learning-rate schedules as pure functions of the step, wrapped in ``LambdaLR``.

Why our own: the multiplier is a small pure function that can be tested exactly, and a
``LambdaLR`` state (``last_epoch``) is all a checkpoint needs to resume it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LRMultiplier", "build_scheduler", "warmup_steps_for"]


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


@dataclass(frozen=True)
class LRMultiplier:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based, before the update).

    Warmup is linear from ``1/(warmup+1)`` to 1 over ``warmup`` steps; then ``cosine_with_min_lr``
    decays to ``min_lr_ratio`` at ``total_steps``, ``cosine`` to 0, ``linear`` to 0, and the
    constant schedules stay at 1.
    """

    name: str
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if self.name == "constant":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.name == "constant_with_warmup":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.name == "linear":
            return 1.0 - progress
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "cosine":
            return cosine
        if self.name == "cosine_with_min_lr":
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
        raise ValueError(f"unknown --lr_scheduler {self.name!r}")


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, warmup_ratio: float,
                    min_lr_ratio: float) -> LambdaLR:
    multiplier = LRMultiplier(name, total_steps, warmup_steps_for(total_steps, warmup_ratio),
                              min_lr_ratio)
    return LambdaLR(optimizer, multiplier)
