"""A frozen model for forward passes only: the DPO reference (and the reference service).

Optional offload keeps the weights on CPU between calls and moves them to the device only for
the forward, trading transfer time for accelerator memory (``--ref.offload``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quartet.data.batch import TokenBatch
from quartet.models.attention import forward_inputs

__all__ = ["InferenceEngine"]


class InferenceEngine:
    """Wraps a module in eval mode with gradients off, in ``dtype``, on ``device``."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 attn_implementation: str, offload: bool = False) -> None:
        self.module = module.eval().requires_grad_(False).to(dtype)
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.offload = offload
        self.module.to("cpu" if offload else device)

    @torch.no_grad()
    def logits(self, batch: TokenBatch, logits_from: int = 0) -> Tensor:
        """Logits ``[R, T - logits_from, V]`` of a causal LM on ``batch``."""
        if self.offload:
            self.module.to(self.device)
        try:
            batch = batch.to(self.device)
            out = self.module(**forward_inputs(batch, self.attn_implementation, self.dtype,
                                               logits_from))
            return out.logits
        finally:
            if self.offload:
                self.module.to("cpu")

    @property
    def on_device(self) -> bool:
        """Whether the weights currently sit on the compute device (False between offloaded
        calls)."""
        param = next(self.module.parameters())
        return param.device.type == self.device.type
