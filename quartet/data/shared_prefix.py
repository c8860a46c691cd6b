"""Rows that start alike, their common prefix computed once: one row per group, not k.

The k sequences of a group start with the same tokens: a preference pair's chosen and
rejected answers (the prompt at least, often much of the answer), or the n samples that PPO /
GRPO / RLOO draw for one prompt. The usual layout runs the model on every row in full, so
every shared token is computed k times. Here each group becomes one row ``prefix + tail 1 +
... + tail k``: an attention mask lets each tail see the prefix and itself but not the other
tails, and every tail's positions continue from the prefix, so every token sees exactly the
context it has in its own sequence. The per-token outputs are then gathered back into the
plain one-row-per-sequence layout (:func:`quartet.data.batch.collate` of the sequences), which
is what the losses read: nothing downstream changes, only less is computed. A backward
through the gather sums the gradients that the k tails send into the shared prefix: the
same gradient as k plain rows.

Used by DPO and RM training (pairs, :func:`collate_pairs`) and by PPO scoring and training
(the samples of one prompt in a micro-batch, :func:`groups_of`) on padded batches with
sdpa/eager attention (flash-attn takes no such mask; packing has its own layout).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from quartet.data.batch import TokenBatch, collate
from quartet.data.tokenize import TokenizedSample

__all__ = ["SharedLayout", "collate_groups", "collate_pairs", "common_prefix_len", "groups_of",
           "shares_prefix"]

_PAD, _PREFIX = -1, 0
"""Segment ids of a shared row: padding, the prefix; tail i of the group is i + 1."""

LogitsFn = Callable[[TokenBatch, int], Tensor]
"""``fn(batch, logits_from) -> logits [R, T - logits_from, V]`` (an engine's forward)."""


def shares_prefix(attn_implementation: str) -> bool:
    """Whether shared-prefix rows can run with this attention kernel (they need a [T, T]
    mask, which flash-attn does not take)."""
    return not attn_implementation.startswith("flash_attention")


def common_prefix_len(*seqs: Sequence[int]) -> int:
    """How many leading tokens all of ``seqs`` have in common."""
    n = 0
    for column in zip(*seqs, strict=False):
        if any(x != column[0] for x in column[1:]):
            break
        n += 1
    return n


def groups_of(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of equal ``keys`` (e.g. each row's prompt token ids) grouped, groups in the
    order of their first row."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@dataclass
class SharedLayout:
    """How the plain batch ``rows`` is computed.

    ``model_batch`` is what the model runs on: ``rows`` itself, or one shared-prefix row per
    group (``model_batch.tree_mask`` set); ``source[j, t]`` is the position in row
    ``model_row[j]`` of ``model_batch`` that computes token ``t`` of ``rows`` row ``j``.
    """

    rows: TokenBatch
    model_batch: TokenBatch
    source: Tensor | None = None
    model_row: Tensor | None = None

    @property
    def shared(self) -> bool:
        return self.source is not None

    def window_start(self, start: int) -> int:
        """The first ``model_batch`` position whose output :meth:`gather` needs for ``rows``
        positions ``start..T-1`` (pass it as the forward's ``logits_from``)."""
        if self.source is None:
            return start
        valid = self.rows.sample_ids[:, start:] >= 0
        return int(self.source[:, start:][valid].min()) if bool(valid.any()) else 0

    def gather(self, out: Tensor, start: int, first: int) -> Tensor:
        """Per-position outputs ``[R', W - first, ...]`` of ``model_batch`` positions
        ``first..W-1`` → those of ``rows`` positions ``start..T-1`` (``[R, T - start, ...]``;
        padding positions hold some other position's output)."""
        if self.source is None:
            return out
        window = self.source[:, start:]
        valid = self.rows.sample_ids[:, start:] >= 0
        cols = torch.where(valid, window, torch.full_like(window, first)) - first
        rows = self.model_row[:, None].expand_as(cols)
        return out[rows.to(out.device), cols.to(out.device)]

    def logits(self, forward: LogitsFn, start: int) -> Tensor:
        """Logits of ``rows`` positions ``start..T-1`` (``[R, T - start, V]``), from one
        forward of ``model_batch`` through ``forward``."""
        first = self.window_start(start)
        return self.gather(forward(self.model_batch, first), start, first)

    def last_token_index(self, width: int) -> Tensor:
        """Flat indices into ``[R', width]`` per-token outputs of ``model_batch`` of each
        ``rows`` sequence's last token (a reward model's score)."""
        if self.source is None:
            return self.rows.last_index
        w = self.rows.input_ids.shape[1]
        rows, cols = self.rows.last_index // w, self.rows.last_index % w
        return self.model_row[rows] * width + self.source[rows, cols]


@dataclass
class _GroupRow:
    """One shared-prefix row: token ids, position ids, segment ids, and for each member of
    the group the row position of each of its tokens."""

    ids: list[int]
    pos: list[int]
    seg: list[int]
    sources: list[list[int]]


def _group_row(members: Sequence[TokenizedSample]) -> _GroupRow:
    seqs = [m.input_ids for m in members]
    p = common_prefix_len(*seqs)
    row = _GroupRow(list(seqs[0][:p]), list(range(p)), [_PREFIX] * p, [])
    for i, seq in enumerate(seqs):
        at = len(row.ids)
        tail = list(seq[p:])
        row.sources.append(list(range(p)) + list(range(at, at + len(tail))))
        row.ids += tail
        row.pos += range(p, p + len(tail))
        row.seg += [i + 1] * len(tail)
    return row


def _tree_mask(seg: Tensor) -> Tensor:
    """``[B, W, W]`` bool: query q may attend key k. Causal; a tail sees the prefix and its
    own earlier tokens, never another tail; a padding position sees only itself."""
    w = seg.shape[1]
    causal = torch.ones(w, w, dtype=torch.bool).tril()[None]
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & ((k == _PREFIX) | (k == q)) & (q != _PAD)
    pad_self = torch.eye(w, dtype=torch.bool)[None] & (q == _PAD)
    return allowed | pad_self


def _check_partition(groups: Sequence[Sequence[int]], n: int) -> None:
    seen = sorted(i for g in groups for i in g)
    if seen != list(range(n)):
        raise ValueError(f"groups must hold each of the {n} sequences once, got {groups}")


def collate_groups(samples: Sequence[TokenizedSample], groups: Sequence[Sequence[int]],
                   pad_token_id: int, *, share_prefix: bool, packed: bool = False
                   ) -> SharedLayout:
    """The layout of ``samples``; ``share_prefix`` computes the common prefix of each group
    (indices into ``samples``, each sequence in one group) once. Padded rows only:
    ``packed`` ignores it, and so does a batch without a group of two or more."""
    plain = collate(samples, pad_token_id, packed=packed)
    _check_partition(groups, len(samples))
    if packed or not share_prefix or all(len(g) < 2 for g in groups):
        return SharedLayout(plain, plain)
    built = [_group_row([samples[i] for i in g]) for g in groups]
    n, width = len(built), max(len(r.ids) for r in built)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), _PAD, dtype=torch.long)
    t = plain.input_ids.shape[1]
    source = torch.zeros((len(samples), t), dtype=torch.long)
    model_row = torch.zeros(len(samples), dtype=torch.long)
    for r, (group, row) in enumerate(zip(groups, built, strict=True)):
        ids[r, :len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
        pos[r, :len(row.ids)] = torch.tensor(row.pos, dtype=torch.long)
        seg[r, :len(row.ids)] = torch.tensor(row.seg, dtype=torch.long)
        for j, src in zip(group, row.sources, strict=True):
            source[j, :len(src)] = torch.tensor(src, dtype=torch.long)
            model_row[j] = r
    lens = [len(r.ids) for r in built]
    attn = (seg != _PAD).long()
    model_batch = TokenBatch(
        input_ids=ids, attention_mask=attn, position_ids=pos,
        target_mask=torch.zeros_like(ids),
        sample_ids=torch.where(attn.bool(), torch.arange(n)[:, None], -1),
        last_index=torch.arange(n) * width + torch.tensor(lens) - 1, seq_lens=lens,
        packed=False, tree_mask=_tree_mask(seg))
    return SharedLayout(plain, model_batch, source, model_row)


def collate_pairs(chosen: Sequence[TokenizedSample], rejected: Sequence[TokenizedSample],
                  pad_token_id: int, *, share_prefix: bool, packed: bool = False
                  ) -> SharedLayout:
    """The layout of ``chosen + rejected``: each pair a group of two."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected sequences")
    n = len(chosen)
    return collate_groups([*chosen, *rejected], [[i, n + i] for i in range(n)], pad_token_id,
                          share_prefix=share_prefix, packed=packed)
