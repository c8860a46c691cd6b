"""Token ids plus a target mask from text chunks; truncation and EOS handling in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quartet.data.templates import Chunk

__all__ = ["TokenizedSample", "tokenize_chunks"]


@dataclass(frozen=True)
class TokenizedSample:
    """One sequence. ``target_mask[t]`` is 1 when token ``t`` is predicted by the loss."""

    input_ids: list[int]
    target_mask: list[int]

    @property
    def num_targets(self) -> int:
        return sum(self.target_mask)


def tokenize_chunks(
    tokenizer: Any,
    chunks: list[Chunk],
    max_len: int,
    add_eos: bool = True,
    force_eos_last: bool = False,
    all_targets: bool = False,
) -> TokenizedSample:
    """Tokenize and concatenate ``chunks``; cut to ``max_len`` tokens.

    - ``add_eos``: append EOS as a target when the text does not already end with it, so the
      model learns to stop.
    - ``force_eos_last``: after truncation, make the last token EOS (a reward model reads its
      score there, so it must be the same token in training and in serving).
    - ``all_targets``: every token but the first is a target (pre-training mode).
    The first token is never a target: nothing predicts it, and in a packed row it would
    otherwise be "predicted" from the previous sample.
    """
    ids: list[int] = []
    mask: list[int] = []
    for index, (text, is_target) in enumerate(chunks):
        piece = tokenizer(text, add_special_tokens=index == 0)["input_ids"]
        ids.extend(piece)
        mask.extend([int(is_target)] * len(piece))
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        mask.append(1 if (not mask or mask[-1] or all_targets) else 0)
    ids, mask = ids[:max_len], mask[:max_len]
    if force_eos_last and eos is not None and ids:
        ids[-1] = eos
    if all_targets:
        mask = [1] * len(ids)
    if mask:
        mask[0] = 0
    return TokenizedSample(ids, mask)
