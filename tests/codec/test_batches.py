"""Ragged batches and row-sliced token batches."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quartet.codec import (
    CodecError,
    RowBatch,
    decode_token_batch,
    encode_token_batch,
    ragged_from_proto,
    ragged_to_proto,
    row_slices,
    token_batch_slices,
)
from quartet.v1 import common_pb2

rows_strategy = st.lists(st.lists(st.integers(0, 511), min_size=0, max_size=20), max_size=12)


@settings(max_examples=50, deadline=None)
@given(rows=rows_strategy)
def test_ragged_round_trip(rows):
    msg = common_pb2.Ragged.FromString(ragged_to_proto(rows, torch.int64).SerializeToString())
    out = ragged_from_proto(msg)
    assert [r.tolist() for r in out] == rows


@pytest.mark.parametrize(
    "offsets, match",
    [([], "offsets"), ([1, 3], r"offsets\[0\]"), ([0, 3, 2, 3], r"offsets\[2\]"),
     ([0, 2], "does not match")],
)
def test_bad_offsets(offsets, match):
    msg = ragged_to_proto([[1, 2, 3]])
    del msg.offsets[:]
    msg.offsets.extend(offsets)
    with pytest.raises(CodecError, match=match):
        ragged_from_proto(msg, "tokens")


def _batch():
    return RowBatch([torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])], [2, 1])


def test_token_batch_validation():
    msg = encode_token_batch(_batch())
    out = decode_token_batch(msg, vocab_size=10, max_len=4)
    assert [r.tolist() for r in out.rows] == [[1, 2, 3, 4], [5, 6]]
    assert out.response_lengths() == [2, 1]
    with pytest.raises(CodecError, match="outside"):
        decode_token_batch(msg, vocab_size=6)
    with pytest.raises(CodecError, match="max length"):
        decode_token_batch(msg, max_len=3)
    bad = encode_token_batch(_batch())
    bad.prompt_lengths[1] = 3
    with pytest.raises(CodecError, match=r"prompt_lengths\[1\]"):
        decode_token_batch(bad)
    del bad.prompt_lengths[1]
    with pytest.raises(CodecError, match="1 entries for 2 rows"):
        decode_token_batch(bad)
    floats = encode_token_batch(_batch())
    floats.tokens.CopyFrom(ragged_to_proto([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]))
    with pytest.raises(CodecError, match="integer dtype"):
        decode_token_batch(floats)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), max_size=30), limit=st.integers(1, 120))
def test_row_slices_cover_rows_in_order_within_limit(sizes, limit):
    slices = row_slices(sizes, limit)
    flat = [i for s, e in slices for i in range(s, e)]
    assert flat == list(range(len(sizes)))
    for s, e in slices:
        assert e - s == 1 or sum(sizes[s:e]) <= limit


def test_token_batch_slices_keep_offsets():
    batch = RowBatch([torch.arange(10) for _ in range(5)], [1] * 5)
    pieces = list(token_batch_slices(batch, max_bytes=200))
    assert [p.row_offset for p in pieces] == [0, 2, 4]
    assert sum(len(p) for p in pieces) == 5
