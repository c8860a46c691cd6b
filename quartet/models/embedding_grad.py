"""An input-embedding lookup whose backward adds its gradient straight into the weight's
`.grad`.

Why: `nn.Embedding`'s backward builds a dense `[V, H]` gradient (108 MiB for a 49k x 576
vocabulary), zero-filled, for each micro-batch, and autograd then adds it to `.grad`: one
more model-embedding-sized tensor at the end of every backward, which is when the actor's
step peaks (all gradients are alive by then). Here the rows of the batch's tokens are added
into `.grad` in place. Only where nothing watches the weight's gradient accumulation
(`TrainEngine.plain_grad_accumulation`), and only for a plain `nn.Embedding` (no
`max_norm`, no `scale_grad_by_freq`, dense).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["embed_into_grad", "plain_embedding"]


def plain_embedding(module: nn.Module) -> nn.Embedding | None:
    """`module` when it is an `nn.Embedding` whose lookup is a plain row gather."""
    if (type(module) is not nn.Embedding or module.max_norm is not None
            or module.scale_grad_by_freq or module.sparse):
        return None
    return module


class _EmbedIntoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.weight = weight  # the leaf parameter whose .grad receives the rows
        ctx.padding_idx = padding_idx
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        flat_ids = ids.reshape(-1)
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx >= 0:  # nn.Embedding gives the padding row no gradient
            keep = flat_ids != ctx.padding_idx
            flat_ids, flat = flat_ids[keep], flat[keep]
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, flat_ids, flat.to(weight.grad.dtype))
        return None, None, None


def embed_into_grad(embedding: nn.Embedding, ids: Tensor) -> Tensor:
    """`embedding(ids)`, whose backward adds into `embedding.weight.grad` (see module doc)."""
    if plain_embedding(embedding) is None:
        raise ValueError("embed_into_grad needs a plain nn.Embedding (no max_norm, "
                         "scale_grad_by_freq or sparse gradient)")
    if not embedding.weight.requires_grad:
        return embedding(ids)
    padding = embedding.padding_idx if embedding.padding_idx is not None else -1
    return _EmbedIntoGrad.apply(embedding.weight, ids, padding)
