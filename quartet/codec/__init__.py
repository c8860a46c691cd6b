"""The wire codec: tensors, ragged batches and chunked streams for every role.

Every decoder validates what a peer controls and raises `CodecError` naming the field.
"""

from quartet.codec.batches import (
    RowBatch,
    check_per_token,
    decode_token_batch,
    encode_token_batch,
    token_batch_slices,
)
from quartet.codec.chunks import DEFAULT_CHUNK_BYTES, TensorAssembler, chunk_tensor, row_slices
from quartet.codec.dtypes import SUPPORTED_DTYPES
from quartet.codec.errors import CodecError
from quartet.codec.ragged import ragged_from_proto, ragged_num_rows, ragged_to_proto
from quartet.codec.tensors import DEFAULT_MAX_TENSOR_BYTES, tensor_from_proto, tensor_to_proto

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
