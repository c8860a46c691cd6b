"""A weight update's manifest: one (name, dtype, shape) per tensor, in sending order.

Sender and receivers derive the same bucket layout from the same manifest, and a digest of
it travels in each session's header so a disagreement is caught before any byte is loaded.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from quartet.codec.dtypes import itemsize, torch_dtype, wire_dtype
from quartet.v1 import common_pb2


@dataclass(frozen=True)
class TensorSpec:
    """Identity of one tensor in an update: its checkpoint name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        return cls(name, tensor.dtype, tuple(int(s) for s in tensor.shape))

    def to_proto(self) -> common_pb2.TensorSpec:
        return common_pb2.TensorSpec(
            name=self.name, dtype=wire_dtype(self.dtype), shape=list(self.shape)
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.TensorSpec, field: str = "tensors") -> TensorSpec:
        """Decodes a spec; raises `CodecError` naming `field` on an unknown dtype."""
        return cls(msg.name, torch_dtype(msg.dtype, f"{field}.dtype"), tuple(msg.shape))

    def describe(self) -> str:
        return f"{self.name} {str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def named_items(named_tensors: NamedTensors) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a mapping or an iterable of pairs."""
    if isinstance(named_tensors, Mapping):
        return named_tensors.items()
    return named_tensors


def specs_of(named_tensors: NamedTensors) -> list[TensorSpec]:
    return [TensorSpec.of(name, t) for name, t in named_items(named_tensors)]


def manifest_digest(specs: Sequence[TensorSpec]) -> int:
    """A signed 63-bit digest of the manifest (names, dtypes, shapes, order)."""
    h = hashlib.blake2b(digest_size=8)
    for s in specs:
        h.update(f"{s.name}\x00{s.dtype}\x00{','.join(map(str, s.shape))}\x01".encode())
    return int.from_bytes(h.digest(), "little") >> 1
