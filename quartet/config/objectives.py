"""Per-trainer objective settings. OpenRLHF spells them ``--model.*``, so they share that prefix.

They are separate groups so that a role that only loads a model (the PPO actor, the reference)
receives a ``ModelConfig`` without DPO's ``beta`` or the RM's margin switch in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quartet.config.base import check


@dataclass(frozen=True)
class SFTObjectiveConfig:
    """SFT loss options."""

    pretrain_mode_enable: bool = False
    """Next-token loss on the whole sequence (continued pre-training), not just the response."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    """token-mean: every target token weighs the same; seq-mean-token-mean: mean NLL of each
    sample, then the mean over samples (every sample weighs the same)."""


@dataclass(frozen=True)
class RMObjectiveConfig:
    """Reward-model loss options."""

    loss_type: Literal["sigmoid", "logexp"] = "sigmoid"
    """Pairwise loss: ``-log sigmoid(c - r)`` or ``log(1 + exp(r - c))``."""
    margin_loss_enable: bool = False
    """Subtract a per-pair margin (dataset field ``--data.margin_key``) inside the loss."""
    compute_fp32_loss_enable: bool = False
    """Upcast scores to fp32 before the loss (for bf16 stability)."""


@dataclass(frozen=True)
class DPOObjectiveConfig:
    """DPO loss options."""

    beta: float = 0.1
    """DPO temperature: higher stays closer to the reference."""
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "apo_zero",
                       "sigmoid_norm"] = "sigmoid"
    """Preference loss (TRL's names): sigmoid (DPO/cDPO), hinge (SLiC), ipo (length-normalised),
    robust (rDPO), bco_pair, sppo_hard, apo_zero, sigmoid_norm (length-normalised DPO)."""
    ipo_enable: bool = False
    """Use the IPO loss (same as --model.loss_type ipo; OpenRLHF's spelling)."""
    label_smoothing: float = 0.0
    """cDPO / robust-DPO label smoothing, in [0, 0.5)."""
    nll_loss_coef: float = 0.0
    """Weight of an NLL term on the chosen response (Llama 3.1 recipe): each chosen response's
    mean token NLL, averaged over pairs (as OpenRLHF)."""

    def __post_init__(self) -> None:
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing",
              f"must be in [0, 0.5), got {self.label_smoothing}")
        check(self.nll_loss_coef >= 0, "nll_loss_coef", f"must be >= 0, got {self.nll_loss_coef}")
        check(not (self.ipo_enable and self.loss_type not in ("sigmoid", "ipo")), "ipo_enable",
              f"contradicts --model.loss_type {self.loss_type}; give one of them")
        check(self.label_smoothing == 0 or self.loss_type in ("sigmoid", "robust"),
              "label_smoothing", f"applies to loss_type sigmoid or robust only, not "
              f"{self.loss_type}")

    @property
    def effective_loss_type(self) -> str:
        """``loss_type``, with ``ipo_enable`` meaning ``ipo``."""
        return "ipo" if self.ipo_enable else self.loss_type
