"""Dense tensors <-> `quartet.v1.Tensor` (dtype + shape + raw little-endian bytes).

Decoding validates everything a peer controls (dtype, each dim, byte count, size limit)
before allocating, so a malformed or hostile message is an error naming the field rather
than a crash or a huge allocation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

from quartet.codec.dtypes import itemsize, torch_dtype, wire_dtype
from quartet.codec.errors import CodecError
from quartet.v1 import common_pb2

# Largest tensor a decoder accepts unless told otherwise.
DEFAULT_MAX_TENSOR_BYTES = 4 << 30

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("quartet's tensor codec assumes a little-endian host")


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes of a tensor in C order (works for bfloat16, which numpy lacks)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        dtype=wire_dtype(tensor.dtype), shape=list(tensor.shape), data=tensor_bytes(tensor)
    )


def validate_shape(shape: Sequence[int], field: str, max_elements: int) -> int:
    """Checks each dim and the element count against a limit; returns the element count."""
    numel = 1
    for i, dim in enumerate(shape):
        if dim < 0:
            raise CodecError(f"{field}.shape[{i}]", f"dimension must be >= 0, got {dim}")
        numel *= dim
        if numel > max_elements:
            raise CodecError(
                f"{field}.shape",
                f"{list(shape)} has more than {max_elements} elements (size limit)",
            )
    return numel


def bytes_to_tensor(
    data: bytes | bytearray, dtype: torch.dtype, shape: Sequence[int], field: str,
    max_bytes: int
) -> torch.Tensor:
    size = itemsize(dtype)
    numel = validate_shape(shape, field, max_bytes // size)
    expected = numel * size
    if len(data) != expected:
        raise CodecError(
            f"{field}.data",
            f"has {len(data)} bytes, expected {expected} for shape {list(shape)} of "
            f"{str(dtype).removeprefix('torch.')}",
        )
    if numel == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    # A bytearray the caller hands over is used in place (the chunk assembler's buffer);
    # immutable bytes get one copy, since torch tensors need writable memory.
    flat = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data),
                            dtype=torch.uint8)
    if dtype == torch.bool and bool((flat > 1).any()):
        raise CodecError(f"{field}.data", "bool tensor holds bytes other than 0 and 1")
    return flat.view(dtype).reshape(tuple(shape))


def tensor_from_proto(
    msg: common_pb2.Tensor, field: str = "tensor", max_bytes: int | None = None
) -> torch.Tensor:
    """Decodes and validates a wire tensor; raises CodecError naming `field`."""
    dtype = torch_dtype(msg.dtype, f"{field}.dtype")
    limit = DEFAULT_MAX_TENSOR_BYTES if max_bytes is None else max_bytes
    if len(msg.data) > limit:
        raise CodecError(f"{field}.data", f"{len(msg.data)} bytes exceed the limit of {limit}")
    return bytes_to_tensor(msg.data, dtype, list(msg.shape), field, limit)


def num_elements(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1
