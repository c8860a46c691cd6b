"""Client side of the batch scoring RPCs (LogProbs, Values): slice out, merge back by offset."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from quartet.codec import RowBatch, encode_token_batch, ragged_from_proto, token_batch_slices
from quartet.codec.chunks import DEFAULT_CHUNK_BYTES
from quartet.v1 import common_pb2


def merge_by_offset(num_rows: int, parts: Iterable[tuple[int, list[torch.Tensor]]],
                    what: str) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * num_rows
    for offset, rows in parts:
        if offset < 0 or offset + len(rows) > num_rows:
            raise ValueError(f"{what}: response slice [{offset}, {offset + len(rows)}) is "
                             f"outside the {num_rows} rows sent")
        out[offset : offset + len(rows)] = rows
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise ValueError(f"{what}: no result for rows {missing[:5]}")
    return out  # type: ignore[return-value]


def logprobs_requests(batch: RowBatch, temperature: float, header: common_pb2.RequestHeader,
                      max_bytes: int = DEFAULT_CHUNK_BYTES):
    for part in token_batch_slices(batch, max_bytes):
        yield common_pb2.LogProbsRequest(header=header, batch=encode_token_batch(part),
                                         temperature=temperature)


def call_logprobs(stream: Callable[..., list[common_pb2.LogProbsResponse]], batch: RowBatch,
                  temperature: float, header: common_pb2.RequestHeader, what: str
                  ) -> list[torch.Tensor]:
    responses = stream(logprobs_requests(batch, temperature, header))
    parts = [(r.row_offset, ragged_from_proto(r.logprobs, "logprobs")) for r in responses]
    return merge_by_offset(len(batch), parts, what)
