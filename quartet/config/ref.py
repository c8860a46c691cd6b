"""``--ref.*``: the frozen reference model (DPO here; the reference service in PPO)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefConfig:
    """Reference model placement."""

    model_name_or_path: str | None = None
    """Reference weights (default: the policy's --model.model_name_or_path)."""
    offload: bool = False
    """Keep the reference on CPU between forward passes to save accelerator memory."""
