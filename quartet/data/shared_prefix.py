"""Preference pairs with their common prefix computed once: one row per pair, not two.

A chosen and a rejected sequence start with the same tokens (the prompt at least; often much
of the answer too). The usual layout runs the model on both rows in full, so every shared
token is computed twice. Here each pair becomes one row ``prefix + chosen tail + rejected
tail``: an attention mask lets each tail see the prefix and itself but not the other tail,
and the rejected tail's positions continue from the prefix, so every token sees exactly the
context it has in its own sequence. The per-token outputs are then gathered back into the
plain two-rows-per-pair layout (:func:`quartet.data.batch.collate` of chosen + rejected), which
is what the losses read: nothing downstream changes, only less is computed.

Used by DPO and RM training on padded batches with sdpa/eager attention (flash-attn takes no
such mask; packing has its own layout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from quartet.data.batch import TokenBatch, collate
from quartet.data.tokenize import TokenizedSample

__all__ = ["PairLayout", "collate_pairs", "common_prefix_len", "shares_prefix"]

_PREFIX, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3

LogitsFn = Callable[[TokenBatch, int], Tensor]
"""``fn(batch, logits_from) -> logits [R, T - logits_from, V]`` (an engine's forward)."""


def shares_prefix(attn_implementation: str) -> bool:
    """Whether shared-prefix rows can run with this attention kernel (they need a [T, T]
    mask, which flash-attn does not take)."""
    return not attn_implementation.startswith("flash_attention")


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PairLayout:
    """How ``pairs`` (chosen rows, then rejected rows) is computed.

    ``model_batch`` is what the model runs on: ``pairs`` itself, or one shared-prefix row
    per pair (``model_batch.tree_mask`` set); ``source[j, t]`` is the position in row
    ``j mod B`` of ``model_batch`` that computes token ``t`` of ``pairs`` row ``j``.
    """

    pairs: TokenBatch
    model_batch: TokenBatch
    source: Tensor | None

    @property
    def shared(self) -> bool:
        return self.source is not None

    def _rows(self) -> Tensor:
        n = self.model_batch.input_ids.shape[0]
        return torch.arange(self.pairs.input_ids.shape[0]) % n

    def logits(self, forward: LogitsFn, start: int) -> Tensor:
        """Logits of ``pairs`` positions ``start..T-1`` (``[2B, T - start, V]``), from one
        forward of ``model_batch`` through ``forward``."""
        if self.source is None:
            return forward(self.model_batch, start)
        window = self.source[:, start:]
        valid = self.pairs.sample_ids[:, start:] >= 0
        first = int(window[valid].min()) if bool(valid.any()) else 0
        out = forward(self.model_batch, first)
        cols = torch.where(valid, window, torch.full_like(window, first)) - first
        rows = self._rows()[:, None].expand_as(cols)
        return out[rows.to(out.device), cols.to(out.device)]

    def last_token_index(self, width: int) -> Tensor:
        """Flat indices into ``[R, width]`` per-token outputs of ``model_batch`` of each
        ``pairs`` sample's last token (a reward model's score)."""
        if self.source is None:
            return self.pairs.last_index
        w = self.pairs.input_ids.shape[1]
        rows, cols = self.pairs.last_index // w, self.pairs.last_index % w
        return self._rows()[rows] * width + self.source[rows, cols]


def _shared_row(chosen: TokenizedSample, rejected: TokenizedSample
                ) -> tuple[list[int], list[int], list[int]]:
    """Token ids, position ids and segment of one shared-prefix row."""
    p = common_prefix_len(chosen.input_ids, rejected.input_ids)
    c_tail, r_tail = chosen.input_ids[p:], rejected.input_ids[p:]
    ids = chosen.input_ids[:p] + c_tail + r_tail
    pos = list(range(p + len(c_tail))) + list(range(p, p + len(r_tail)))
    seg = [_PREFIX] * p + [_CHOSEN] * len(c_tail) + [_REJECTED] * len(r_tail)
    return ids, pos, seg


def _source_positions(chosen: TokenizedSample, rejected: TokenizedSample,
                      width: int) -> tuple[Tensor, Tensor]:
    """``[width]`` row positions of the chosen and the rejected tokens (0 past their end)."""
    p = common_prefix_len(chosen.input_ids, rejected.input_ids)
    c, r = len(chosen.input_ids), len(rejected.input_ids)
    src_c = torch.zeros(width, dtype=torch.long)
    src_r = torch.zeros(width, dtype=torch.long)
    src_c[:c] = torch.arange(c)
    src_r[:p] = torch.arange(p)
    src_r[p:r] = torch.arange(c, c + r - p)
    return src_c, src_r


def _tree_mask(seg: Tensor) -> Tensor:
    """``[B, W, W]`` bool: query q may attend key k. Causal; a tail sees the prefix and its
    own earlier tokens, never the other tail; a padding position sees only itself."""
    w = seg.shape[1]
    causal = torch.ones(w, w, dtype=torch.bool).tril()[None]
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & ((k == _PREFIX) | (k == q)) & (q != _PAD)
    pad_self = torch.eye(w, dtype=torch.bool)[None] & (q == _PAD)
    return allowed | pad_self


def collate_pairs(chosen: Sequence[TokenizedSample], rejected: Sequence[TokenizedSample],
                  pad_token_id: int, *, share_prefix: bool, packed: bool = False) -> PairLayout:
    """The layout of ``chosen + rejected``; ``share_prefix`` computes each pair's common
    prefix once (padded rows only: ``packed`` ignores it)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected sequences")
    pairs = collate([*chosen, *rejected], pad_token_id, packed=packed)
    if packed or not share_prefix:
        return PairLayout(pairs, pairs, None)
    rows = [_shared_row(c, r) for c, r in zip(chosen, rejected, strict=True)]
    width = max(len(ids) for ids, _, _ in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), _PAD, dtype=torch.long)
    for i, (row_ids, row_pos, row_seg) in enumerate(rows):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        pos[i, :len(row_ids)] = torch.tensor(row_pos)
        seg[i, :len(row_ids)] = torch.tensor(row_seg)
    lens = [len(r[0]) for r in rows]
    attn = (seg != _PAD).long()
    owner = torch.where(attn.bool(), torch.arange(n)[:, None], -1)
    model_batch = TokenBatch(
        input_ids=ids, attention_mask=attn, position_ids=pos,
        target_mask=torch.zeros_like(ids), sample_ids=owner,
        last_index=torch.arange(n) * width + torch.tensor(lens) - 1, seq_lens=lens,
        packed=False, tree_mask=_tree_mask(seg))
    t = pairs.input_ids.shape[1]
    sources = [_source_positions(c, r, t) for c, r in zip(chosen, rejected, strict=True)]
    source = torch.stack([s[0] for s in sources] + [s[1] for s in sources])
    return PairLayout(pairs, model_batch, source)
