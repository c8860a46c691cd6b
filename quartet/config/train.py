"""``--train.*``: batch sizes, epochs, seed."""

from __future__ import annotations

from dataclasses import dataclass

from quartet.config.base import check


def check_batch_sizes(batch_size: int, micro_batch_size: int) -> None:
    """``--train.batch_size`` rows per optimizer step, split into whole micro-batches."""
    check(batch_size > 0, "batch_size", f"must be > 0, got {batch_size}")
    check(micro_batch_size > 0, "micro_batch_size", f"must be > 0, got {micro_batch_size}")
    check(batch_size % micro_batch_size == 0, "batch_size",
          f"{batch_size} is not a multiple of --train.micro_batch_size {micro_batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    """How much data per optimizer step and for how long."""

    batch_size: int = 128
    """Global batch size: samples (pairs for RM/DPO) per optimizer step over all ranks."""
    micro_batch_size: int = 1
    """Samples per forward/backward on one rank; the rest is gradient accumulation."""
    max_epochs: int = 1
    """Passes over the training data."""
    seed: int = 42
    """Seed for model init of new heads, data order and dropout."""
    stop_after_steps: int = -1
    """End the run after this optimizer step without changing the LR schedule (-1: never).
    Simulates preemption; resume with --ckpt.load_enable."""

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size)
        check(self.max_epochs > 0, "max_epochs", f"must be > 0, got {self.max_epochs}")
