"""Token batches to score (`quartet.v1.SequenceBatch`) and their row-sliced streaming.

A SequenceBatch row is prompt + response token ids; per-token outputs cover the response
part only. Slicing by rows keeps each streamed message near the chunk size while every
slice stays self-contained (row_offset says where it belongs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from quartet.codec.chunks import DEFAULT_CHUNK_BYTES, row_slices
from quartet.codec.errors import CodecError
from quartet.codec.ragged import ragged_from_proto, ragged_to_proto
from quartet.v1 import common_pb2


@dataclass
class RowBatch:
    """Decoded SequenceBatch: rows of token ids (int64) and each row's prompt length.

    The wire-level, ragged form of a batch; `quartet.data.batch.TokenBatch` is the padded or
    packed tensor form a model consumes (`quartet.engines.scoring.to_model_batch` converts).
    """

    rows: list[torch.Tensor]
    prompt_lengths: list[int]
    row_offset: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def response_lengths(self) -> list[int]:
        return [r.numel() - p for r, p in zip(self.rows, self.prompt_lengths, strict=True)]

    def slice(self, start: int, end: int) -> RowBatch:
        return RowBatch(self.rows[start:end], self.prompt_lengths[start:end],
                          self.row_offset + start)


def encode_token_batch(batch: RowBatch) -> common_pb2.SequenceBatch:
    return common_pb2.SequenceBatch(
        tokens=ragged_to_proto(batch.rows, dtype=torch.int64),
        prompt_lengths=batch.prompt_lengths,
        row_offset=batch.row_offset,
    )


def decode_token_batch(
    msg: common_pb2.SequenceBatch,
    field: str = "batch",
    vocab_size: int | None = None,
    max_len: int | None = None,
    max_bytes: int | None = None,
) -> RowBatch:
    """Decodes and validates: integer tokens in [0, vocab), one prompt length per row,
    1 <= prompt_length <= row length, rows no longer than max_len."""
    rows = ragged_from_proto(msg.tokens, f"{field}.tokens", max_bytes)
    if rows and rows[0].dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise CodecError(f"{field}.tokens.values.dtype",
                         f"token ids must be an integer dtype, got {rows[0].dtype}")
    rows = [r.to(torch.int64) for r in rows]
    prompt_lengths = list(msg.prompt_lengths)
    if len(prompt_lengths) != len(rows):
        raise CodecError(f"{field}.prompt_lengths",
                         f"has {len(prompt_lengths)} entries for {len(rows)} rows")
    for i, (row, p) in enumerate(zip(rows, prompt_lengths, strict=True)):
        if p < 1 or p > row.numel():
            raise CodecError(f"{field}.prompt_lengths[{i}]",
                             f"must be in [1, {row.numel()}] (row length), got {p}")
        if max_len is not None and row.numel() > max_len:
            raise CodecError(f"{field}.tokens",
                             f"row {i} has {row.numel()} tokens, more than the model's "
                             f"max length {max_len}")
        if vocab_size is not None and row.numel() and (
            int(row.min()) < 0 or int(row.max()) >= vocab_size
        ):
            raise CodecError(f"{field}.tokens",
                             f"row {i} has token ids outside [0, {vocab_size})")
    if msg.row_offset < 0:
        raise CodecError(f"{field}.row_offset", f"must be >= 0, got {msg.row_offset}")
    return RowBatch(rows, prompt_lengths, msg.row_offset)


def token_batch_slices(
    batch: RowBatch, max_bytes: int = DEFAULT_CHUNK_BYTES, extra_bytes_per_token: int = 0
) -> Iterator[RowBatch]:
    """Consecutive row slices whose payload (8 bytes per token id plus any per-token extras
    such as advantages) stays under max_bytes."""
    sizes = [r.numel() * (8 + extra_bytes_per_token) for r in batch.rows]
    for start, end in row_slices(sizes, max_bytes):
        yield batch.slice(start, end)


def check_per_token(
    rows: Sequence[torch.Tensor], expected_lengths: Sequence[int], field: str
) -> None:
    """A per-response-token field must have one value per response token of each row."""
    if len(rows) != len(expected_lengths):
        raise CodecError(field, f"has {len(rows)} rows, expected {len(expected_lengths)}")
    for i, (r, n) in enumerate(zip(rows, expected_lengths, strict=True)):
        if r.numel() != n:
            raise CodecError(f"{field}", f"row {i} has {r.numel()} values, expected {n} "
                                         "(one per response token)")
