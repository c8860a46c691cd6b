"""A frozen model for forward passes only: the DPO reference (and the reference service).

Optional offload keeps the weights on CPU between calls and moves them to the device only for
the forward, trading transfer time for accelerator memory (``--ref.offload``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from quartet.data.batch import TokenBatch
from quartet.models.attention import forward_inputs
from quartet.models.output_layer import plain_output_layer

__all__ = ["InferenceEngine"]


class InferenceEngine:
    """Wraps a module in eval mode with gradients off, in ``dtype``, on ``device``."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 attn_implementation: str, offload: bool = False,
                 placed_by_deepspeed: bool = False) -> None:
        """`placed_by_deepspeed`: the module is a ZeRO-3 partitioned one whose dtype, device
        and offload DeepSpeed manages; it is left where it is."""
        if placed_by_deepspeed and offload:
            raise ValueError("offload: DeepSpeed places a ZeRO-3 module (offload_param)")
        self.module = module.eval().requires_grad_(False)
        if not placed_by_deepspeed:
            self.module.to(dtype).to("cpu" if offload else device)
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.offload = offload
        self.placed_by_deepspeed = placed_by_deepspeed

    @contextmanager
    def placed(self) -> Iterator[nn.Module]:
        """The module on the compute device for the duration of the block (moved there and
        back when offloaded): the one place any frozen model's forward runs."""
        if self.offload:
            self.module.to(self.device)
        try:
            with torch.no_grad():
                yield self.module
        finally:
            if self.offload:
                self.module.to("cpu")

    def logits(self, batch: TokenBatch, logits_from: int = 0) -> Tensor:
        """Logits ``[R, T - logits_from, V]`` of a causal LM on ``batch``."""
        with self.placed() as module:
            batch = batch.to(self.device)
            return module(**forward_inputs(batch, self.attn_implementation, self.dtype,
                                           logits_from)).logits

    def output_weight(self) -> Tensor | None:
        """The output layer's weight when the logits are exactly `hidden @ weight.T`
        (`quartet.models.output_layer.plain_output_layer`) and the weight stays whole where it
        is between calls (not offloaded, not ZeRO-3): then :meth:`hidden` and chunked log-probs
        can replace the logits. None otherwise."""
        if self.offload or self.placed_by_deepspeed:
            return None
        head = plain_output_layer(self.module)
        return head.weight if head is not None else None

    def hidden(self, batch: TokenBatch, hidden_from: int = 0) -> Tensor:
        """The decoder's final hidden states `[R, T - hidden_from, H]` of positions
        `hidden_from..T-1` (where :meth:`output_weight` is not None)."""
        with self.placed() as module:
            batch = batch.to(self.device)
            out = module.get_decoder()(**forward_inputs(batch, self.attn_implementation,
                                                        self.dtype))
            return out.last_hidden_state[:, hidden_from:]

    @property
    def on_device(self) -> bool:
        """Whether the weights currently sit on the compute device (False between offloaded
        calls)."""
        param = next(self.module.parameters())
        return param.device.type == self.device.type
