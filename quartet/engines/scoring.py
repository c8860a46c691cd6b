"""Forward passes over token batches: per-response-token log-probs and values.

Shared by the actor (old log-probs), the reference (KL anchor), the critic (values) and the
in-process mode, so every role aligns tokens and responses the same way: row = prompt +
response; the logit at position t predicts token t+1; outputs cover response tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from quartet.algos.losses import entropy_from_logits, token_logprobs
from quartet.codec.batches import TokenBatch


@dataclass
class PaddedBatch:
    """A right-padded view of a TokenBatch plus the mask of response-token targets.

    `targets_mask[i, t]` is True when input position t predicts a response token of row i
    (t in [prompt_len - 1, row_len - 2]).
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets_mask: torch.Tensor  # [B, L-1] bool
    response_lengths: list[int]


def pad_token_batch(batch: TokenBatch, pad_id: int, device: torch.device | str = "cpu"
                    ) -> PaddedBatch:
    lengths = [r.numel() for r in batch.rows]
    width = max(lengths)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    targets_mask = torch.zeros((len(batch), max(width - 1, 1)), dtype=torch.bool)
    for i, (row, p) in enumerate(zip(batch.rows, batch.prompt_lengths, strict=True)):
        n = row.numel()
        input_ids[i, :n] = row
        attention_mask[i, :n] = 1
        targets_mask[i, p - 1 : n - 1] = True
    return PaddedBatch(
        input_ids.to(device), attention_mask.to(device), targets_mask.to(device),
        batch.response_lengths(),
    )


def _split_rows(values: torch.Tensor, padded: PaddedBatch) -> list[torch.Tensor]:
    """[B, L-1] per-position values → one 1-D tensor of response-token values per row."""
    out = []
    for i in range(values.shape[0]):
        out.append(values[i][padded.targets_mask[i]].float().cpu())
    return out


def micro_batches(batch: TokenBatch, micro_batch_size: int) -> list[TokenBatch]:
    return [batch.slice(s, s + micro_batch_size) for s in range(0, len(batch), micro_batch_size)]


@dataclass
class LogProbsResult:
    logprobs: list[torch.Tensor]
    entropy: list[torch.Tensor] | None


@torch.no_grad()
def response_logprobs(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: TokenBatch,
    pad_id: int,
    temperature: float = 1.0,
    micro_batch_size: int = 8,
    with_entropy: bool = False,
    device: torch.device | str = "cpu",
) -> LogProbsResult:
    """Log-probs of each response token; `forward(input_ids, attention_mask)` returns logits."""
    logprobs: list[torch.Tensor] = []
    entropy: list[torch.Tensor] = []
    for mb in micro_batches(batch, micro_batch_size):
        padded = pad_token_batch(mb, pad_id, device)
        logits = forward(padded.input_ids, padded.attention_mask)[:, :-1]
        labels = padded.input_ids[:, 1:]
        logprobs.extend(_split_rows(token_logprobs(logits, labels, temperature), padded))
        if with_entropy:
            entropy.extend(_split_rows(entropy_from_logits(logits, temperature), padded))
    return LogProbsResult(logprobs, entropy if with_entropy else None)


@torch.no_grad()
def response_values(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: TokenBatch,
    pad_id: int,
    micro_batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Value of each response token; `forward` returns per-position values [B, L].

    The value of response token t is read at the position that predicts it (t-1), i.e. the
    state before the action, matching the log-prob alignment.
    """
    out: list[torch.Tensor] = []
    for mb in micro_batches(batch, micro_batch_size):
        padded = pad_token_batch(mb, pad_id, device)
        values = forward(padded.input_ids, padded.attention_mask)[:, :-1]
        out.extend(_split_rows(values, padded))
    return out
