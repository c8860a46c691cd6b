"""Round trips of every supported dtype and shape, chunked and not, and malformed input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quartet.codec import (
    SUPPORTED_DTYPES,
    CodecError,
    TensorAssembler,
    chunk_tensor,
    tensor_from_proto,
    tensor_to_proto,
)
from quartet.v1 import common_pb2

shapes = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=4)


def _random_tensor(dtype: torch.dtype, shape: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(SUPPORTED_DTYPES), shape=shapes, seed=st.integers(0, 1000))
def test_round_trip_every_dtype_and_shape(dtype, shape, seed):
    t = _random_tensor(dtype, shape, seed)
    wire = common_pb2.Tensor.FromString(tensor_to_proto(t).SerializeToString())
    assert _same(tensor_from_proto(wire), t)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(SUPPORTED_DTYPES), shape=shapes, seed=st.integers(0, 1000),
       chunk_bytes=st.integers(1, 97))
def test_chunked_round_trip(dtype, shape, seed, chunk_bytes):
    t = _random_tensor(dtype, shape, seed)
    chunks = list(chunk_tensor("w", t, chunk_bytes))
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    assert _same(TensorAssembler().add_all(chunks)["w"], t)


def test_non_contiguous_and_multiple_tensors_stream():
    a = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    b = torch.ones(3, dtype=torch.bfloat16)
    asm = TensorAssembler()
    asm.add_all([*chunk_tensor("a", a, 10), *chunk_tensor("b", b, 4)])
    out = asm.tensors()
    assert _same(out["a"], a.contiguous()) and _same(out["b"], b)


def _msg(dtype=common_pb2.DTYPE_FLOAT32, shape=(2,), data=b"\0" * 8):
    return common_pb2.Tensor(dtype=dtype, shape=list(shape), data=data)


@pytest.mark.parametrize(
    "msg, field",
    [
        (_msg(data=b"\0" * 7), "x.data"),
        (_msg(dtype=common_pb2.DTYPE_UNSPECIFIED), "x.dtype"),
        (_msg(dtype=99), "x.dtype"),
        (_msg(shape=(2, -1)), "x.shape[1]"),
        (_msg(shape=(1 << 40, 1 << 40)), "x.shape"),
        (_msg(dtype=common_pb2.DTYPE_BOOL, shape=(2,), data=b"\x01\x02"), "x.data"),
    ],
)
def test_malformed_tensors_name_the_field(msg, field):
    with pytest.raises(CodecError) as info:
        tensor_from_proto(msg, "x")
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_size_limit_is_enforced_before_allocation():
    t = torch.zeros(1000)
    with pytest.raises(CodecError, match="limit"):
        tensor_from_proto(tensor_to_proto(t), "x", max_bytes=1000)
    assert tensor_from_proto(tensor_to_proto(t), "x", max_bytes=4000).numel() == 1000


def test_assembler_rejects_bad_streams():
    chunks = list(chunk_tensor("w", torch.arange(10.0), 8))
    with pytest.raises(CodecError, match="out of order"):
        TensorAssembler().add_all([chunks[0], chunks[2]])
    with pytest.raises(CodecError, match="ended inside"):
        TensorAssembler().add_all(chunks[:-1])
    bad_total = common_pb2.TensorChunk()
    bad_total.CopyFrom(chunks[0])
    bad_total.total_bytes = 12
    with pytest.raises(CodecError, match="total_bytes"):
        TensorAssembler().add(bad_total)
    with pytest.raises(CodecError, match="already received"):
        TensorAssembler().add_all(chunks + chunks)
    with pytest.raises(CodecError, match="limit"):
        TensorAssembler(max_bytes=16).add(chunks[0])
