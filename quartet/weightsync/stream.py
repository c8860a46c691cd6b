"""The fallback data plane: weights streamed over gRPC (`Rollout.PushWeights`) in chunks.

For when no torch.distributed group can be formed between actor and rollout (different
networks, no shared fabric). Slower than a broadcast (every byte is copied into protobuf
messages) but needs nothing beyond the gRPC channel. The first message carries the version
and the manifest; every later message carries one `TensorChunk`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from quartet.codec import DEFAULT_CHUNK_BYTES, CodecError, TensorAssembler, chunk_tensor
from quartet.v1 import common_pb2, rollout_pb2
from quartet.weightsync.specs import NamedTensors, TensorSpec, named_items, specs_of


def push_requests(
    version: int,
    named_tensors: NamedTensors,
    specs: Sequence[TensorSpec] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    header: common_pb2.RequestHeader | None = None,
) -> Iterator[rollout_pb2.PushWeightsRequest]:
    """The request stream of one PushWeights call (lazy in the tensors when `specs` given)."""
    if specs is None:
        items = list(named_items(named_tensors))
        specs = specs_of(items)
    else:
        items = named_items(named_tensors)
    yield rollout_pb2.PushWeightsRequest(
        header=header, version=version, tensors=[s.to_proto() for s in specs]
    )
    for name, tensor in items:
        for chunk in chunk_tensor(name, tensor.detach().cpu(), chunk_bytes):
            yield rollout_pb2.PushWeightsRequest(chunk=chunk)


class PushedWeights:
    """The server's view of a PushWeights stream: version and manifest first, then tensors."""

    def __init__(
        self, requests: Iterable[rollout_pb2.PushWeightsRequest], max_tensor_bytes: int
    ) -> None:
        self._requests = iter(requests)
        self._max_tensor_bytes = max_tensor_bytes
        try:
            first = next(self._requests)
        except StopIteration:
            raise CodecError("version", "empty PushWeights stream") from None
        if first.HasField("chunk"):
            raise CodecError("chunk", "the first message must carry version and tensors, "
                                      "not a chunk")
        self.header = first.header
        self.version: int = first.version
        self.specs: list[TensorSpec] = [
            TensorSpec.from_proto(t, f"tensors[{i}]") for i, t in enumerate(first.tensors)
        ]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields each tensor as soon as its last chunk arrived (one tensor held at a time)."""
        assembler = TensorAssembler(self._max_tensor_bytes, field="chunk")
        for req in self._requests:
            if not req.HasField("chunk"):
                raise CodecError("chunk", "every message after the first must carry a chunk")
            assembler.add(req.chunk)
            if assembler.done:
                yield from assembler.tensors().items()
                assembler = TensorAssembler(self._max_tensor_bytes, field="chunk")
        assembler.tensors()  # raises when the stream ended inside a tensor
