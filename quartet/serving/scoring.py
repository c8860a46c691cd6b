"""Shared LogProbs handling of the actor and reference servicers.

Both roles answer the same `LogProbs` contract; this turns a stream of request slices into a
stream of response slices around any object with `logprobs(batch, temperature, with_entropy)`,
`vocab_size` and `max_len`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from quartet.codec import decode_token_batch, ragged_to_proto
from quartet.engines.scoring import LogProbsResult
from quartet.serving.errors import InvalidArgument
from quartet.v1 import common_pb2


class LogProbScorer(Protocol):
    vocab_size: int
    max_len: int

    def logprobs(self, batch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult: ...


def validate_temperature(temperature: float, field: str = "temperature") -> float:
    """0 on the wire means 'unset' and reads as 1.0; negatives are rejected."""
    if temperature < 0:
        raise InvalidArgument(f"{field}: must be > 0, got {temperature}")
    return temperature or 1.0


def stream_logprobs(
    requests: Iterable[common_pb2.LogProbsRequest],
    scorer: LogProbScorer,
    policy_version: int = 0,
    with_entropy: bool = False,
) -> Iterator[common_pb2.LogProbsResponse]:
    for req in requests:
        temperature = validate_temperature(req.temperature)
        batch = decode_token_batch(req.batch, "batch", scorer.vocab_size, scorer.max_len)
        if len(batch) == 0:
            raise InvalidArgument("batch.tokens: no rows")
        result = scorer.logprobs(batch, temperature, with_entropy)
        yield common_pb2.LogProbsResponse(
            row_offset=batch.row_offset,
            logprobs=ragged_to_proto(result.logprobs, dtype=torch.float32),
            entropy=(ragged_to_proto(result.entropy, dtype=torch.float32)
                     if result.entropy is not None else None),
            policy_version=policy_version,
        )
