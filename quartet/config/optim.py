"""Optimizer groups: ``--adam.*``, ``--muon.*`` and the flat ``--optim``/scheduler/clip flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quartet.config.base import check

SCHEDULERS = ("cosine_with_min_lr", "cosine", "linear", "constant", "constant_with_warmup")


@dataclass(frozen=True)
class AdamConfig:
    """``--adam.*``: AdamW settings (also the auxiliary Adam for non-matrix params under Muon)."""

    lr: float = 1e-5
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam beta1 beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (biases and norms are exempt, except under Muon)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {self.betas}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class MuonConfig:
    """``--muon.*``: DeepSpeed's Muon for 2-D hidden matrices."""

    lr: float = 0.02
    """Learning rate of the Muon (matrix) parameter group."""
    momentum: float = 0.95
    """Muon momentum."""
    ns_steps: int = 5
    """Newton-Schulz iterations (DeepSpeed hard-codes 5; other values only warn)."""
    nesterov: bool = True
    """Nesterov momentum (DeepSpeed hard-codes True; False only warns)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class OptimConfig:
    """Flat flags: optimizer choice, LR schedule and gradient clipping."""

    optim: Literal["adam", "muon"] = "adam"
    """Optimizer: ``adam`` uses --adam.*, ``muon`` uses --muon.* plus --adam.* for the rest."""
    lr_scheduler: Literal[
        "cosine_with_min_lr", "cosine", "linear", "constant", "constant_with_warmup"
    ] = "cosine_with_min_lr"
    """Learning-rate schedule after warmup."""
    lr_warmup_ratio: float = 0.03
    """Fraction of all optimizer steps spent warming up linearly from 0."""
    min_lr_ratio: float = 0.1
    """Floor of cosine_with_min_lr, as a fraction of the peak LR."""
    max_norm: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""

    def __post_init__(self) -> None:
        check(0 <= self.lr_warmup_ratio <= 1, "lr_warmup_ratio",
              f"must be in [0, 1], got {self.lr_warmup_ratio}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
              f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.max_norm >= 0, "max_norm", f"must be >= 0, got {self.max_norm}")
