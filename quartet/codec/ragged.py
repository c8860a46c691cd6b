"""Ragged batches as flat values + offsets (`quartet.v1.Ragged`), never padded matrices.

Row i is `values[offsets[i]:offsets[i+1]]`. Padding would waste bandwidth on variable-length
responses and force every peer to agree on a pad side; offsets carry the exact lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quartet.codec.errors import CodecError
from quartet.codec.tensors import tensor_from_proto, tensor_to_proto
from quartet.v1 import common_pb2

Row = torch.Tensor | Sequence[int] | Sequence[float]


def ragged_to_proto(rows: Sequence[Row], dtype: torch.dtype | None = None) -> common_pb2.Ragged:
    """Flattens rows (tensors or lists) into one 1-D tensor plus offsets."""
    tensors = [r if isinstance(r, torch.Tensor) else torch.tensor(list(r)) for r in rows]
    if dtype is None:
        non_empty = [t for t in tensors if t.numel()]
        dtype = non_empty[0].dtype if non_empty else torch.int64
    offsets = [0]
    for t in tensors:
        offsets.append(offsets[-1] + t.numel())
    values = (
        torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        if tensors
        else torch.empty(0, dtype=dtype)
    )
    return common_pb2.Ragged(values=tensor_to_proto(values), offsets=offsets)


def validate_offsets(offsets: Sequence[int], num_values: int, field: str) -> None:
    if len(offsets) == 0:
        raise CodecError(f"{field}.offsets", "must have num_rows + 1 entries, got none")
    if offsets[0] != 0:
        raise CodecError(f"{field}.offsets[0]", f"must be 0, got {offsets[0]}")
    for i in range(1, len(offsets)):
        if offsets[i] < offsets[i - 1]:
            raise CodecError(
                f"{field}.offsets[{i}]",
                f"decreases ({offsets[i - 1]} -> {offsets[i]}); offsets must not decrease",
            )
    if offsets[-1] != num_values:
        raise CodecError(
            f"{field}.offsets",
            f"last offset {offsets[-1]} does not match the {num_values} values",
        )


def ragged_from_proto(
    msg: common_pb2.Ragged, field: str = "ragged", max_bytes: int | None = None
) -> list[torch.Tensor]:
    """Decodes a ragged batch into one 1-D tensor per row (views into one buffer)."""
    values = tensor_from_proto(msg.values, f"{field}.values", max_bytes)
    if values.dim() != 1:
        raise CodecError(f"{field}.values.shape", f"must be 1-D, got {list(values.shape)}")
    offsets = list(msg.offsets)
    validate_offsets(offsets, values.numel(), field)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def ragged_num_rows(msg: common_pb2.Ragged) -> int:
    return max(len(msg.offsets) - 1, 0)
