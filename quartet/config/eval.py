"""``--eval.*``: held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from quartet.config.base import check


@dataclass(frozen=True)
class EvalConfig:
    """When and on what to evaluate."""

    steps: int = -1
    """Evaluate every N optimizer steps (-1: only at the end, if there is eval data)."""
    dataset: str | None = None
    """Evaluation dataset (same formats as --data.dataset); none disables evaluation."""
    split: str = "test"
    """Split of a hub dataset or directory to evaluate on."""
    max_samples: int = 100_000_000
    """Evaluate on at most this many rows."""

    def __post_init__(self) -> None:
        check(self.steps == -1 or self.steps > 0, "steps", f"must be -1 or > 0, got {self.steps}")
