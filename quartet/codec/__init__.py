"""The wire codec: tensors, ragged batches and chunked streams for every role.

Every decoder validates what a peer controls and raises `CodecError` naming the field.

The names below are loaded on first use (PEP 562), not when the package is imported: a process
that only needs `quartet.codec.errors` (every server, through its interceptors) must not import
torch for it; the rule-reward service and the coordinator's client stubs stay torch-free that
way (docs/benchmarks.md, "Fourth pass (lean)").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quartet.codec.batches import (
        RowBatch,
        check_per_token,
        decode_token_batch,
        encode_token_batch,
        token_batch_slices,
    )
    from quartet.codec.chunks import (
        DEFAULT_CHUNK_BYTES,
        TensorAssembler,
        chunk_tensor,
        row_slices,
    )
    from quartet.codec.dtypes import SUPPORTED_DTYPES
    from quartet.codec.errors import CodecError
    from quartet.codec.ragged import ragged_from_proto, ragged_num_rows, ragged_to_proto
    from quartet.codec.tensors import (
        DEFAULT_MAX_TENSOR_BYTES,
        tensor_from_proto,
        tensor_to_proto,
    )

_SOURCE = {
    "RowBatch": "batches",
    "check_per_token": "batches",
    "decode_token_batch": "batches",
    "encode_token_batch": "batches",
    "token_batch_slices": "batches",
    "DEFAULT_CHUNK_BYTES": "chunks",
    "TensorAssembler": "chunks",
    "chunk_tensor": "chunks",
    "row_slices": "chunks",
    "SUPPORTED_DTYPES": "dtypes",
    "CodecError": "errors",
    "ragged_from_proto": "ragged",
    "ragged_num_rows": "ragged",
    "ragged_to_proto": "ragged",
    "DEFAULT_MAX_TENSOR_BYTES": "tensors",
    "tensor_from_proto": "tensors",
    "tensor_to_proto": "tensors",
}
"""Each public name -> the submodule defining it."""

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_TENSOR_BYTES",
    "SUPPORTED_DTYPES",
    "CodecError",
    "TensorAssembler",
    "RowBatch",
    "check_per_token",
    "decode_token_batch",
    "encode_token_batch",
    "token_batch_slices",
    "chunk_tensor",
    "ragged_from_proto",
    "ragged_num_rows",
    "ragged_to_proto",
    "row_slices",
    "tensor_from_proto",
    "tensor_to_proto",
]


def __getattr__(name: str) -> Any:
    source = _SOURCE.get(name)
    if source is None:
        raise AttributeError(f"module 'quartet.codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"quartet.codec.{source}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
