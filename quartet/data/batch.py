"""Batches of variable-length sequences, padded or packed, with the bookkeeping losses need.

One representation serves both layouts so that trainers never branch on packing:
``sample_ids`` says which sample owns each token (-1 for padding), and ``last_index`` points at
each sample's last token in the flattened batch (where a reward model reads its score).

Packing puts all samples of a micro-batch into one row. ``position_ids`` restart at 0 for every
sample; the model layer turns ``seq_lens`` into a block-diagonal causal mask (sdpa/eager) or
hands ``position_ids`` to flash-attn varlen, so no token attends across samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from quartet.data.tokenize import TokenizedSample

__all__ = ["TokenBatch", "collate", "packed_causal_mask"]


@dataclass
class TokenBatch:
    """``[R, T]`` tensors; R = number of samples (padded) or 1 (packed)."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    target_mask: Tensor
    sample_ids: Tensor
    last_index: Tensor
    seq_lens: list[int]
    packed: bool
    tree_mask: Tensor | None = None
    """``[R, T, T]`` bool, query may attend key, replacing the causal mask (rows that share a
    prefix, see :mod:`quartet.data.shared_prefix`); None: causal + padding mask."""

    @property
    def num_samples(self) -> int:
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)

    def to(self, device: torch.device | str) -> TokenBatch:
        fields = ("input_ids", "attention_mask", "position_ids", "target_mask", "sample_ids",
                  "last_index")
        moved = {f: getattr(self, f).to(device) for f in fields}
        tree = None if self.tree_mask is None else self.tree_mask.to(device)
        return TokenBatch(**moved, seq_lens=self.seq_lens, packed=self.packed, tree_mask=tree)

    def shifted(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(labels, target_mask, sample_ids)`` aligned with ``logits[:, :-1]``."""
        return self.input_ids[:, 1:], self.target_mask[:, 1:].bool(), self.sample_ids[:, 1:]

    def per_sample_sum(self, token_values: Tensor, mask: Tensor, sample_ids: Tensor) -> Tensor:
        """Sum of ``token_values`` over masked tokens of each sample: ``[num_samples]``."""
        keep = mask & (sample_ids >= 0)
        values = torch.where(keep, token_values, torch.zeros_like(token_values))
        index = torch.where(keep, sample_ids, torch.zeros_like(sample_ids))
        out = token_values.new_zeros(self.num_samples)
        return out.index_add(0, index.reshape(-1), values.reshape(-1))

    def per_sample_mean(self, token_values: Tensor, mask: Tensor,
                        sample_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Mean of ``token_values`` over each sample's masked tokens and the token counts, both
        ``[num_samples]`` (a sample without tokens has mean 0 and count 0); packing-safe."""
        sums = self.per_sample_sum(token_values, mask, sample_ids)
        counts = self.per_sample_sum(torch.ones_like(token_values), mask, sample_ids)
        return sums / counts.clamp(min=1.0), counts


def collate(
    samples: Sequence[TokenizedSample], pad_token_id: int, packed: bool = False
) -> TokenBatch:
    """Right-pad ``samples`` into ``[B, T]``, or pack them into ``[1, sum(len)]``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    lens = [len(s.input_ids) for s in samples]
    if packed:
        ids = torch.tensor([t for s in samples for t in s.input_ids], dtype=torch.long)[None]
        tgt = torch.tensor([m for s in samples for m in s.target_mask], dtype=torch.long)[None]
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        sid = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])[None]
        attn = torch.ones_like(ids)
        last = torch.cumsum(torch.tensor(lens), 0) - 1
    else:
        width = max(lens)
        ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
        tgt = torch.zeros((len(samples), width), dtype=torch.long)
        attn = torch.zeros((len(samples), width), dtype=torch.long)
        sid = torch.full((len(samples), width), -1, dtype=torch.long)
        for i, s in enumerate(samples):
            n = lens[i]
            ids[i, :n] = torch.tensor(s.input_ids)
            tgt[i, :n] = torch.tensor(s.target_mask)
            attn[i, :n] = 1
            sid[i, :n] = i
        pos = torch.arange(width).expand(len(samples), width).clone()
        last = torch.arange(len(samples)) * width + torch.tensor(lens) - 1
    return TokenBatch(ids, attn, pos, tgt, sid, last, lens, packed)


def packed_causal_mask(seq_lens: Sequence[int], dtype: torch.dtype,
                       device: torch.device | str = "cpu") -> Tensor:
    """Additive ``[1, 1, N, N]`` mask: causal within each sample, blocked across samples.

    Additive (0 / dtype-min) rather than bool because eager attention adds the mask to the
    scores, and sdpa accepts the same float mask.
    """
    owner = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(seq_lens)])
    n = owner.numel()
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    allowed = causal & (owner[:, None] == owner[None, :])
    mask = torch.zeros(n, n, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
