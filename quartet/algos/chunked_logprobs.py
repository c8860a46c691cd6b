"""Response-token log-probs (and entropy) straight from the final hidden states, in chunks of
positions, with a backward that recomputes each chunk's logits (beyond a byte budget kept from
the forward).

Why: the logits path (`lm_head` over a window of positions, then :func:`token_logprobs` and
:func:`entropy_from_logits`) keeps `[R, T, V]` logits alive for backward, and its backward
materialises several more tensors of that size (the logits' gradient; one zero-filled
`[R, T, V]` gradient per row that `token_logprobs` selects; the window gather's scatter).
With a 49k vocabulary these are 50-100 MB each per micro-batch, more than the decoder
layers' activations under checkpointing, and each one is freshly zeroed and page-faulted.
Here only the hidden states of the response positions (`[N, H]`) and one log-sum-exp per
position are kept; each chunk of positions computes its logits, log-prob and entropy and
drops them, and backward computes them again chunk by chunk (one more `[c, H] x [H, V]`
product per chunk) to form the gradients of the hidden states and of the output layer.

Same function as the logits path: `log p(label) = z[label] - logsumexp(z)` and
`H = logsumexp(z) - sum softmax(z) * z` with `z = logits / temperature`
(fp16/bf16 logits are upcast, as :func:`quartet.algos.losses.token_logprobs` does).
Gradients: `d log p / dz = onehot(label) - p`, `dH / dz = -p * (log p + H)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK_LOGITS_BYTES", "chunk_rows", "hidden_token_stats"]

CHUNK_LOGITS_BYTES = 16 << 20
"""Float32 logits held per chunk (~85 positions of a 49k vocabulary): small enough that a
chunk's temporaries are reused from the heap instead of mapped afresh, large enough for an
efficient matrix product."""


def chunk_rows(vocab_size: int, budget: int = CHUNK_LOGITS_BYTES) -> int:
    """Positions per chunk so that a chunk's float32 logits stay within `budget` bytes."""
    return max(1, budget // (4 * max(vocab_size, 1)))


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The logits path's: fp16/bf16 logits are upcast to float32, others kept."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunk_logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    z = hidden @ weight.t()
    z = z.to(_stats_dtype(z.dtype))
    if temperature != 1.0:
        z = z / temperature
    return z


class _HiddenTokenStats(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], labels [N]) -> (log-probs [N], entropy [N])."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float,
                chunk: int, into_grad: bool, with_entropy: bool,
                keep_bytes: int) -> tuple[Tensor, Tensor]:
        n = hidden.shape[0]
        dtype = _stats_dtype(torch.result_type(hidden, weight))
        logprobs = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        safe = labels.clamp(min=0)
        kept: list[Tensor] = []  # the first chunks' log-softmax, while keep_bytes lasts
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z = _chunk_logits(hidden[s:e], weight, temperature)
            lse[s:e] = torch.logsumexp(z, dim=-1)
            logprobs[s:e] = z.gather(-1, safe[s:e, None]).squeeze(-1) - lse[s:e]
            if with_entropy:
                entropy[s:e] = lse[s:e] - (torch.softmax(z, dim=-1) * z).sum(dim=-1)
            if len(kept) == s // chunk and z.numel() * z.element_size() <= keep_bytes:
                keep_bytes -= z.numel() * z.element_size()
                kept.append(z.sub_(lse[s:e, None]))  # what backward computes first
        if not with_entropy:
            entropy.zero_()
            ctx.mark_non_differentiable(entropy)
        logprobs = torch.where(labels >= 0, logprobs, torch.zeros_like(logprobs))
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.kept = kept
        ctx.temperature = temperature
        ctx.chunk = chunk
        ctx.weight = weight if into_grad else None  # a leaf: no reference cycle
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, g_logprobs: Tensor | None, g_entropy: Tensor | None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        none = (None,) * 6  # labels, temperature, chunk, into_grad, with_entropy, keep
        if (g_logprobs is None and g_entropy is None) or not (want_hidden or want_weight):
            return None, None, *none
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = None
        if want_weight:
            param = ctx.weight
            if param is not None and param.grad is None:
                param.grad = torch.zeros_like(param)
            grad_weight = param.grad if param is not None else torch.zeros_like(weight)
        valid = labels >= 0
        safe = labels.clamp(min=0)
        kept, ctx.kept = ctx.kept, []  # freed chunk by chunk below
        for i, s in enumerate(range(0, n, ctx.chunk)):
            e = min(s + ctx.chunk, n)
            if i < len(kept):
                log_p, kept[i] = kept[i], None
            else:
                z = _chunk_logits(hidden[s:e], weight, ctx.temperature)
                log_p = z.sub_(lse[s:e, None])  # z is not needed any more: log p in its place
            p = log_p.exp()
            g = (torch.where(valid[s:e], g_logprobs[s:e], torch.zeros_like(g_logprobs[s:e]))
                 if g_logprobs is not None else None)
            if g_entropy is None:
                # d log p(label) / dz = onehot(label) - p: p scaled in place (the same bits
                # as 0 - p * g)
                grad_z = p.mul_(g.neg()[:, None])
            else:
                grad_z = torch.zeros_like(p)
                # dH/dz = -p (log p + H)
                grad_z.addcmul_(p, log_p.add_(entropy[s:e, None]),
                                value=-1.0).mul_(g_entropy[s:e, None])
                if g is not None:
                    grad_z.addcmul_(p, g[:, None], value=-1.0)
            if g is not None:
                grad_z.scatter_add_(-1, safe[s:e, None], g[:, None])
            if ctx.temperature != 1.0:
                grad_z.div_(ctx.temperature)
            grad_z = grad_z.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(grad_z, weight, out=grad_hidden[s:e])
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.t(), hidden[s:e])
        if ctx.weight is not None:  # already in weight.grad
            return grad_hidden, None, *none
        return grad_hidden, grad_weight, *none


def hidden_token_stats(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                       chunk: int | None = None, into_grad: bool = False,
                       with_entropy: bool = True, keep_bytes: int = 0
                       ) -> tuple[Tensor, Tensor]:
    """Log-prob of each label and the entropy at each position under
    `softmax(hidden @ weight.T / temperature)`, never holding more than a chunk of logits
    beyond `keep_bytes`.

    `hidden` `[N, H]` are the final hidden states of the positions that predict `labels`
    `[N]` (a negative label gives log-prob 0, as in `token_logprobs`); `weight` `[V, H]` is
    the bias-free output layer. Both results are `[N]`, float32 for fp16/bf16 inputs (the
    inputs' dtype otherwise, as `token_logprobs`), and differentiable (with
    respect to `hidden` and `weight`); detach the entropy when it is only reported.

    `keep_bytes`: when a gradient will be asked for, the first chunks' log-softmax (up to this
    many bytes) is kept from the forward for backward, which then skips those chunks'
    `[c, H] x [H, V]` recomputation (the same values: the product is computed once instead of
    twice). Memory for time: the kept bytes live from this forward to its backward."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [N, H] with labels [N], got "
                         f"labels {tuple(labels.shape)}")
    rows = chunk or chunk_rows(weight.shape[0])
    if into_grad and not (weight.is_leaf and weight.requires_grad):
        raise ValueError("into_grad needs the output layer's weight as a leaf parameter")
    if keep_bytes < 0:
        raise ValueError(f"keep_bytes must be >= 0, got {keep_bytes}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _HiddenTokenStats.apply(hidden, weight, labels.long(), float(temperature), rows,
                                   into_grad, with_entropy, keep_bytes if grad else 0)
