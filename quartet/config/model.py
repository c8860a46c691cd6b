"""``--model.*``: which model to load and how (shared by every trainer and the PPO roles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    gradient_checkpointing_policy: Literal["full", "selective"] = "full"
    """What checkpointing recomputes in backward. full: each decoder layer's whole forward
    (keeps only the layer inputs; about one more forward per step). selective: only the
    cheap pointwise ops (norms, rotary, SiLU, residual adds), keeping the matmul and
    attention outputs: less memory saved, far less recompute, the same gradients
    (quartet.models.checkpointing). selective needs the non-reentrant implementation."""
    aux_loss_coef: float = 0.0
    """MoE load-balancing loss coefficient; > 0 adds the model's ``aux_loss`` to the loss."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint directory."""

    def __post_init__(self) -> None:
        check(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
        check_checkpointing(self.gradient_checkpointing_enable,
                            self.gradient_checkpointing_policy,
                            self.gradient_checkpointing_use_reentrant)


def check_checkpointing(enable: bool, policy: str, use_reentrant: bool = False,
                        group: str = "--model") -> None:
    """A checkpointing policy other than the default needs checkpointing on, and selective
    checkpointing needs the non-reentrant implementation (torch runs selective contexts only
    there). ``group`` is the flag prefix of the group validated (`--model`, `--actor`), named
    in the messages; the parser prefixes the field itself."""
    check(enable or policy == "full", "gradient_checkpointing_policy",
          f"{policy} takes effect only with {group}.gradient_checkpointing_enable; add it "
          "or drop the policy")
    check(not (policy == "selective" and use_reentrant), "gradient_checkpointing_policy",
          f"selective runs only with the non-reentrant implementation; drop "
          f"{group}.gradient_checkpointing_use_reentrant")
