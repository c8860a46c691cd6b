"""Forward passes over prompt+response rows: which positions score which response tokens.

Shared by the actor (old log-probs and PPO steps), the reference (KL anchor), the critic
(values) and the in-process mode, so every role aligns tokens the same way — a KL between
two roles that disagreed by one position would be silently wrong. A row is prompt +
response; the output at position t predicts token t+1; results cover response tokens only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from quartet.algos.chunked_logprobs import hidden_token_stats
from quartet.algos.losses import entropy_from_logits, token_logprobs
from quartet.codec.batches import RowBatch
from quartet.data.batch import TokenBatch, collate
from quartet.data.shared_prefix import SharedLayout, collate_groups, groups_of
from quartet.data.tokenize import TokenizedSample


@dataclass
class LogProbsResult:
    logprobs: list[torch.Tensor]
    entropy: list[torch.Tensor] | None

    def rows(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One (log-probs, entropy or None) pair per row: the unit rows are scattered and
        gathered in over data-parallel ranks."""
        return list(zip(self.logprobs, self.entropy or [None] * len(self.logprobs),
                        strict=True))

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                  with_entropy: bool) -> LogProbsResult:
        return cls([lp for lp, _ in rows], [e for _, e in rows] if with_entropy else None)


def _samples(rows: RowBatch) -> list[TokenizedSample]:
    return [TokenizedSample(r.tolist(), [0] * p + [1] * (r.numel() - p))
            for r, p in zip(rows.rows, rows.prompt_lengths, strict=True)]


def to_model_batch(rows: RowBatch, pad_id: int, packed: bool = False) -> TokenBatch:
    """Prompt+response rows → the trainers' padded/packed batch, targets on response tokens."""
    return collate(_samples(rows), pad_id, packed)


def to_model_layout(rows: RowBatch, pad_id: int, packed: bool = False,
                    share_prefix: bool = False) -> SharedLayout:
    """`to_model_batch` (the layout's `rows`) and how the model computes it: with
    `share_prefix`, the rows of one prompt (the n samples of a group) as one shared-prefix
    row (:mod:`quartet.data.shared_prefix`); rows with no partner stay rows of their own."""
    samples = _samples(rows)
    prompts = groups_of([tuple(s.input_ids[:p])
                         for s, p in zip(samples, rows.prompt_lengths, strict=True)])
    return collate_groups(samples, prompts, pad_id, share_prefix=share_prefix, packed=packed)


def response_start(batch: TokenBatch) -> int:
    """The first position of `logits[:, :-1]` that predicts a response token in any row.

    Logits before it are never read, so a forward can skip them (`logits_to_keep`): the
    vocabulary projection and its softmax then run on response positions (plus the padding
    and the other rows' prompt tails within the window), not on every prompt token."""
    _, target, _ = batch.shifted()
    columns = target.any(dim=0).nonzero()
    return int(columns[0]) if columns.numel() else 0


def response_positions(batch: TokenBatch, start: int = 0) -> list[torch.Tensor]:
    """For each sample, the flat indices into `[R, T-1-start]` (positions `start..T-2`) of
    the positions that predict its response tokens, in order (padded and packed layouts)."""
    _, target, owner = batch.shifted()
    flat_owner = owner[:, start:].reshape(-1)
    flat_target = target[:, start:].reshape(-1)
    return [torch.nonzero(flat_target & (flat_owner == i), as_tuple=False).squeeze(-1)
            for i in range(batch.num_samples)]


def gather_rows(per_position: torch.Tensor, positions: Sequence[torch.Tensor]
                ) -> list[torch.Tensor]:
    flat = per_position.reshape(-1)
    return [flat[p.to(flat.device)] for p in positions]


def stats_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      positions: Sequence[torch.Tensor], temperature: float = 1.0,
                      into_grad: bool = False, with_entropy: bool = True,
                      keep_bytes: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample, the log-probs and entropies of its response tokens, from the final hidden
    states `hidden` `[R, W, H]` aligned with `labels` `[R, W]` (as `logits[:, :-1]`) and the
    output layer's `weight`: what `gather_rows` of `token_logprobs` / `entropy_from_logits`
    gives on the logits, computed only at `positions` (`response_positions`) and a chunk of
    positions at a time (:mod:`quartet.algos.chunked_logprobs`; `into_grad`: backward adds
    the output layer's gradient straight into `weight.grad`; without `with_entropy` the
    entropies are zeros, not computed; `keep_bytes`: log-softmax kept for backward instead of
    recomputed there)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    index = (torch.cat(list(positions)) if len(positions)
             else torch.zeros(0, dtype=torch.long)).to(flat.device)
    lp, ent = hidden_token_stats(flat[index], weight, labels.reshape(-1).to(flat.device)[index],
                                 temperature, into_grad=into_grad, with_entropy=with_entropy,
                                 keep_bytes=keep_bytes)
    sizes = [int(p.numel()) for p in positions]
    return list(lp.split(sizes)), list(ent.split(sizes))


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows (may carry grad) → right-padded [B, T] and bool mask."""
    lengths = torch.tensor([r.numel() for r in rows])
    width = max(int(lengths.max()) if len(rows) else 0, 1)
    padded = pad_sequence([r.float() for r in rows], batch_first=True)
    if padded.shape[1] < width:
        padded = torch.nn.functional.pad(padded, (0, width - padded.shape[1]))
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return padded, mask.to(padded.device)


def split_micro(n: int, micro_batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + micro_batch_size, n)) for s in range(0, n, micro_batch_size)]


HiddenFn = Callable[[TokenBatch, int], tuple[torch.Tensor, torch.Tensor]]
"""`hidden_of(batch, start)`: the final hidden states of positions `start..T-1` and the output
layer's weight, for a model whose logits are exactly `hidden @ weight.T`."""


def hidden_fn(weight: torch.Tensor | None,
              hidden: Callable[[TokenBatch, int], torch.Tensor]) -> HiddenFn | None:
    """A `HiddenFn` from an engine's `output_weight()` and its hidden-state forward; None
    (the logits path) where the engine has no plain output layer."""
    if weight is None:
        return None
    return lambda batch, start: (hidden(batch, start), weight)


def layout_stats_from_hidden(layout: SharedLayout, start: int, positions: Sequence[torch.Tensor],
                             hidden_of: HiddenFn, temperature: float = 1.0,
                             into_grad: bool = False, with_entropy: bool = True,
                             keep_bytes: int = 0
                             ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """`stats_from_hidden` for one micro-batch's `layout` (`start`: `response_start` of its
    rows): runs `hidden_of` on the model batch from the layout's window and maps the hidden
    states back to the rows. Returns (log-probs, entropies, the rows' hidden states)."""
    first = layout.window_start(start)
    hidden, weight = hidden_of(layout.model_batch, first)
    hidden = layout.gather(hidden, start, first)[:, :-1]
    lps, ents = stats_from_hidden(hidden, weight, layout.rows.input_ids[:, start + 1:],
                                  positions, temperature, into_grad=into_grad,
                                  with_entropy=with_entropy, keep_bytes=keep_bytes)
    return lps, ents, hidden


@torch.no_grad()
def response_logprobs(
    logits_of: Callable[[TokenBatch, int], torch.Tensor],
    rows: RowBatch,
    pad_id: int,
    temperature: float = 1.0,
    micro_batch_size: int = 8,
    with_entropy: bool = False,
    packed: bool = False,
    share_prefix: bool = False,
    hidden_of: HiddenFn | None = None,
) -> LogProbsResult:
    """Log-prob (and optionally entropy) of each response token; `logits_of(batch, start)`
    runs the model on a padded/packed batch and returns the logits of positions `start..T-1`
    (`[R, T-start, V]`; see `response_start`). `share_prefix`: the rows of one prompt in a
    micro-batch run as one shared-prefix row (`to_model_layout`; needs sdpa/eager).
    `hidden_of` (a model with a plain output layer): used instead of `logits_of`, the
    log-probs come from the response positions' hidden states in chunks
    (`stats_from_hidden`), never from a `[R, T, V]` logits tensor."""
    lps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for s, e in split_micro(len(rows), micro_batch_size):
        layout = to_model_layout(rows.slice(s, e), pad_id, packed, share_prefix)
        batch = layout.rows
        start = response_start(batch)
        pos = response_positions(batch, start)
        if hidden_of is not None:
            row_lps, row_ents, _ = layout_stats_from_hidden(
                layout, start, pos, hidden_of, temperature, with_entropy=with_entropy)
            lps += [t.float().cpu() for t in row_lps]
            ents += [t.float().cpu() for t in row_ents] if with_entropy else []
            continue
        logits = layout.logits(logits_of, start)[:, :-1]
        labels = batch.input_ids[:, start + 1:].to(logits.device)
        lps += [t.float().cpu() for t in gather_rows(
            token_logprobs(logits, labels, temperature), pos)]
        if with_entropy:
            ents += [t.float().cpu() for t in gather_rows(
                entropy_from_logits(logits, temperature), pos)]
    return LogProbsResult(lps, ents if with_entropy else None)
