"""``--ds.*``: the DeepSpeed engine, precision, attention, packing, LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quartet.config.base import check

NO_RING_ATTENTION = (
    "RingAttention (sequence parallelism over ranks) is not implemented in quartet: it needs a "
    "ring-attention kernel (ring-flash-attn on GPU), sequence-sharded batches and a loss that "
    "gathers over the ring, none of which exists yet; long contexts need gradient "
    "checkpointing and smaller micro-batches instead")


@dataclass(frozen=True)
class LoraConfig:
    """``--ds.lora.*``: low-rank adapters (peft). Rank 0 disables LoRA."""

    rank: int = 0
    """Adapter rank; 0 trains all weights."""
    alpha: int = 16
    """Adapter scaling numerator (scale = alpha / rank)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names to adapt; ``all-linear`` adapts every linear layer but the output head."""

    def __post_init__(self) -> None:
        check(self.rank >= 0, "rank", f"must be >= 0, got {self.rank}")
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """Engine settings shared by every DeepSpeed-trained model."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 replicates everything, 1 shards optimizer state, 2 also gradients, 3 also
    parameters."""
    param_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Training precision of the parameters (master weights stay fp32)."""
    adam_offload: bool = False
    """Keep optimizer state on CPU (DeepSpeedCPUAdam, compiled on first use)."""
    zpg: int = 1
    """ZeRO++ hierarchical partition size (ZeRO-3 only)."""
    overlap_comm: bool = False
    """Overlap gradient reduction with backward."""
    grad_accum_dtype: Literal["fp32", "bf16", "fp16"] | None = None
    """Data type gradients are accumulated in (default: DeepSpeed's choice)."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] = (
        "sdpa"
    )
    """Attention kernel; flash_attention_* fall back to sdpa with a warning when flash-attn is
    not installed."""
    packing_samples: bool = False
    """Pack several samples into one row; attention never crosses samples."""
    value_head_prefix: str = "score"
    """Attribute name of the scalar value head (``score`` loads as
    AutoModelForSequenceClassification)."""
    load_in_4bit: bool = False
    """QLoRA: load base weights in 4-bit (bitsandbytes, GPU) and train LoRA adapters."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter settings."""
    ring_attn_size: int = 1
    """RingAttention group size (sequence parallelism); only 1 is supported (see below)."""
    ring_attn_head_stride: int = 1
    """Heads processed per RingAttention step; only 1 (RingAttention is not implemented)."""

    def __post_init__(self) -> None:
        check(self.zpg >= 1, "zpg", f"must be >= 1, got {self.zpg}")
        check(self.ring_attn_size == 1, "ring_attn_size",
              f"got {self.ring_attn_size}, use 1: {NO_RING_ATTENTION}")
        check(self.ring_attn_head_stride == 1, "ring_attn_head_stride",
              f"got {self.ring_attn_head_stride}, use 1: {NO_RING_ATTENTION}")
        check(self.value_head_prefix.isidentifier(), "value_head_prefix",
              f"must be a Python identifier, got {self.value_head_prefix!r}")
        check(not self.load_in_4bit or self.lora.rank > 0, "load_in_4bit",
              "QLoRA trains adapters only: set --ds.lora.rank > 0")
