"""``--model.*``: which model to load and how (shared by every trainer and the PPO roles)."""

from __future__ import annotations

from dataclasses import dataclass

from quartet.config.base import check


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from and how the module is built around them."""

    model_name_or_path: str = ""
    """Hugging Face model directory or hub name (offline: must already be cached)."""
    gguf_file: str | None = None
    """File name of a GGUF checkpoint inside ``model_name_or_path`` (dequantized on load)."""
    gradient_checkpointing_enable: bool = False
    """Recompute activations in backward to save memory."""
    gradient_checkpointing_use_reentrant: bool = False
    """Use the reentrant checkpoint implementation (the non-reentrant one works with LoRA)."""
    aux_loss_coef: float = 0.0
    """MoE load-balancing loss coefficient; > 0 adds the model's ``aux_loss`` to the loss."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint directory."""

    def __post_init__(self) -> None:
        check(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
