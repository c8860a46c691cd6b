"""``--logger.*``: progress, TensorBoard, W&B and the jsonl metrics file."""

from __future__ import annotations

from dataclasses import dataclass, field

from quartet.config.base import check


@dataclass(frozen=True)
class WandbConfig:
    """``--logger.wandb.*``: Weights & Biases; off unless a key is given."""

    key: str | None = None
    """API key; enables W&B logging."""
    org: str | None = None
    """Entity (team or user)."""
    group: str | None = None
    """Run group."""
    project: str = "quartet"
    """Project name."""
    run_name: str | None = None
    """Run name (default: trainer and timestamp)."""


@dataclass(frozen=True)
class LoggerConfig:
    """Where metrics go and how often."""

    logging_steps: int = 1
    """Log every N optimizer steps."""
    tensorboard_dir: str = ""
    """TensorBoard log directory (empty: ``<output_dir>/tensorboard``); ``none`` disables."""
    metrics_file: str | None = None
    """jsonl metrics file (default: ``<output_dir>/metrics.jsonl``)."""
    progress_bar_enable: bool = True
    """Show a tqdm progress bar on rank 0."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """W&B settings."""

    def __post_init__(self) -> None:
        check(self.logging_steps >= 1, "logging_steps", f"must be >= 1, got {self.logging_steps}")
