"""Activation checkpointing of the decoder layers: full, or selective (recompute only the
cheap ops).

Why selective: a decoder layer's activations are mostly outputs of cheap pointwise ops
(RMSNorm's intermediates, rotary embeddings, SiLU, the gate x up product, residual adds,
GQA's repeated keys and values). Full checkpointing keeps only each layer's input and runs
the whole layer forward again in backward (about one more forward: ~+30% of a step).
Selective checkpointing (torch's `create_selective_checkpoint_contexts`) keeps the outputs
of the expensive ops (matrix multiplies, attention) and recomputes only the rest, so it
costs a few pointwise passes per layer instead of a forward. The recomputed values are
bit-identical (same inputs, same kernels), so the gradients are the ones without
checkpointing.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

__all__ = ["SAVED_OPS", "checkpoint_kwargs", "save_expensive_ops"]

_aten = torch.ops.aten

SAVED_OPS = frozenset(
    op for op in (
        _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
        getattr(_aten, "_flash_attention_forward", None) and _aten._flash_attention_forward.default,
    ) if op
)
"""The ops whose outputs selective checkpointing keeps: the matrix multiplies (`nn.Linear`
and the eager attention's products reach the dispatcher as these) and the fused attention
kernels. Everything else in a checkpointed layer is recomputed in backward."""


def save_expensive_ops(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective checkpointing policy: keep `SAVED_OPS`' outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_kwargs(policy: str, use_reentrant: bool) -> dict[str, Any]:
    """Keyword arguments for `torch.utils.checkpoint.checkpoint` (what Hugging Face's
    `gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)` passes on) for
    `--model.gradient_checkpointing_policy` `policy`."""
    if policy == "full":
        return {"use_reentrant": use_reentrant}
    if policy == "selective":
        if use_reentrant:
            raise ValueError("selective checkpointing runs only with the non-reentrant "
                             "implementation")
        return {"use_reentrant": False,
                "context_fn": partial(create_selective_checkpoint_contexts, save_expensive_ops)}
    raise ValueError(f"unknown checkpointing policy {policy!r}")
