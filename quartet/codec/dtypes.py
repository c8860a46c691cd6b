"""Mapping between torch dtypes and the wire enum `quartet.v1.DType`."""

from __future__ import annotations

import torch

from quartet.v1 import common_pb2

TORCH_TO_WIRE: dict[torch.dtype, int] = {
    torch.float32: common_pb2.DTYPE_FLOAT32,
    torch.float16: common_pb2.DTYPE_FLOAT16,
    torch.bfloat16: common_pb2.DTYPE_BFLOAT16,
    torch.float64: common_pb2.DTYPE_FLOAT64,
    torch.int64: common_pb2.DTYPE_INT64,
    torch.int32: common_pb2.DTYPE_INT32,
    torch.int16: common_pb2.DTYPE_INT16,
    torch.int8: common_pb2.DTYPE_INT8,
    torch.uint8: common_pb2.DTYPE_UINT8,
    torch.bool: common_pb2.DTYPE_BOOL,
}
WIRE_TO_TORCH: dict[int, torch.dtype] = {v: k for k, v in TORCH_TO_WIRE.items()}

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(TORCH_TO_WIRE)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def wire_dtype(dtype: torch.dtype) -> int:
    from quartet.codec.errors import CodecError

    try:
        return TORCH_TO_WIRE[dtype]
    except KeyError:
        raise CodecError("dtype", f"{dtype} cannot be sent; supported: {_names()}") from None


def torch_dtype(wire: int, field: str) -> torch.dtype:
    from quartet.codec.errors import CodecError

    try:
        return WIRE_TO_TORCH[wire]
    except KeyError:
        raise CodecError(
            field, f"unknown or unspecified dtype {wire}; expected one of {_names()}"
        ) from None


def _names() -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)


FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
"""The floating dtypes a model or a weight transfer may be configured with, by name."""


def float_dtype(name: str, field: str = "dtype") -> torch.dtype:
    """`FLOAT_DTYPES[name]`, or a ValueError naming `field` and the choices."""
    try:
        return FLOAT_DTYPES[name]
    except KeyError:
        raise ValueError(f"{field}: must be one of {', '.join(FLOAT_DTYPES)}, "
                         f"got {name!r}") from None


def wire_dtype_named(name: str, field: str = "dtype") -> int:
    """The wire enum of a floating dtype given by name ("bfloat16" -> DTYPE_BFLOAT16)."""
    return TORCH_TO_WIRE[float_dtype(name, field)]
