"""Flags of the trainable PPO roles (actor, critic): `quartet serve actor --model.* --ds.* ...`.

A service receives its own groups, not the coordinator's whole namespace; the flag names are
the trainers' (`--model.*`, `--ds.*`, `--adam.*`, `--optim`, ...) plus `--train.*` sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quartet.config.base import check, flat_group
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, MuonConfig, OptimConfig
from quartet.config.train import check_batch_sizes


@dataclass(frozen=True)
class RoleTrainConfig:
    """``--train.*`` of a PPO role: how many rows one TrainStep carries and how it splits."""

    batch_size: int = 8
    """Rows per TrainStep (the PPO mini-batch); one optimizer step each."""
    micro_batch_size: int = 2
    """Rows per forward/backward; the rest is gradient accumulation."""
    total_steps: int = 1000
    """Optimizer steps the LR schedule spans (the coordinator passes the real count)."""
    seed: int = 42
    """Seed for new heads and dropout."""

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size)
        check(self.total_steps > 0, "total_steps", f"must be > 0, got {self.total_steps}")


@dataclass(frozen=True)
class TrainingRoleConfig:
    """A DeepSpeed-trained PPO role (actor or critic)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ds: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = flat_group(OptimConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    muon: MuonConfig = field(default_factory=MuonConfig)
    train: RoleTrainConfig = field(default_factory=RoleTrainConfig)

    def __post_init__(self) -> None:
        check(bool(self.model.model_name_or_path), "--model.model_name_or_path", "is required")
        check(not (self.optim.optim == "muon" and self.ds.adam_offload), "--ds.adam_offload",
              "is incompatible with --optim muon; drop --ds.adam_offload")
