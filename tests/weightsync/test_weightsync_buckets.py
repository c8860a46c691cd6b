"""Bucket planning, packing and the gRPC-streamed fallback, without any process group."""

from __future__ import annotations

import pytest
import torch

from quartet.codec import CodecError
from quartet.weightsync import TensorSpec, manifest_digest, plan_buckets, specs_of
from quartet.weightsync.buckets import (
    ALIGN_BYTES,
    as_bytes,
    chunk_ranges,
    num_chunks,
    pack_bucket,
    pack_range,
    unpack_bucket,
)
from quartet.weightsync.stream import PushedWeights, push_requests


def tensors():
    return {
        "w": torch.randn(10, 7),
        "b": torch.randn(3).to(torch.bfloat16),
        "s": torch.tensor(2.5),
        "m": torch.tensor([True, False, True]),
        "e": torch.zeros(0, 2),
        "h": torch.randn(50, dtype=torch.float16),
        "i": torch.arange(9, dtype=torch.int64).reshape(3, 3),
    }


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 100, 1 << 20])
def test_a_bucket_packed_chunk_by_chunk_equals_the_bucket_packed_whole(chunk_bytes):
    """The ring's chunks (any size, cutting through tensors) put every byte where
    `pack_bucket` puts it; the alignment gaps are not compared (neither writes them)."""
    named = tensors()
    [bucket] = plan_buckets(specs_of(named), 1 << 20)
    whole = pack_bucket(bucket, list(named.values()), torch.zeros(bucket.nbytes,
                                                                  dtype=torch.uint8))
    chunked = torch.zeros(bucket.nbytes, dtype=torch.uint8)
    ranges = chunk_ranges(bucket.nbytes, chunk_bytes)
    assert len(ranges) == num_chunks([bucket.nbytes, 0], chunk_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == bucket.nbytes
    assert all(hi - lo <= chunk_bytes and hi == nxt for (lo, hi), (nxt, _)
               in zip(ranges, ranges[1:], strict=False))
    flat = [as_bytes(t) for t in named.values()]
    for lo, hi in ranges:
        out = torch.full((chunk_bytes,), 0xAB, dtype=torch.uint8)
        pack_range(bucket, flat, lo, hi, out)
        chunked[lo:hi] = out[: hi - lo]
    got = dict(unpack_bucket(bucket, chunked))
    for name, t in dict(unpack_bucket(bucket, whole)).items():
        assert torch.equal(got[name].reshape(-1).view(torch.uint8),
                           t.reshape(-1).view(torch.uint8)), name


@pytest.mark.parametrize("bucket_bytes", [1, 64, 200, 1 << 20])
def test_pack_unpack_round_trip(bucket_bytes):
    named = tensors()
    plan = plan_buckets(specs_of(named), bucket_bytes)
    assert [s.name for b in plan for s in b.specs] == list(named)
    got = {}
    for b in plan:
        assert all(off % ALIGN_BYTES == 0 for off in b.offsets)
        assert b.nbytes <= max(bucket_bytes, max(s.nbytes for s in b.specs))
        buf = torch.empty(b.nbytes, dtype=torch.uint8)
        pack_bucket(b, [named[s.name] for s in b.specs], buf)
        got.update({n: t.clone() for n, t in unpack_bucket(b, buf)})
    for n, t in named.items():
        assert got[n].dtype == t.dtype and got[n].shape == t.shape
        assert torch.equal(got[n], t)


def test_large_buckets_hold_many_tensors():
    specs = [TensorSpec(f"p{i}", torch.float32, (256,)) for i in range(100)]
    plan = plan_buckets(specs, 16 << 10)
    assert len(plan) == 7  # 100 KiB of tensors in 16 KiB buckets, not 100 calls


def test_digest_depends_on_names_shapes_dtypes_and_order():
    a = specs_of(tensors())
    assert manifest_digest(a) == manifest_digest(list(a))
    assert manifest_digest(a) != manifest_digest(a[::-1])
    b = [TensorSpec(a[0].name, torch.float16, a[0].shape), *a[1:]]
    assert manifest_digest(a) != manifest_digest(b)


def test_push_stream_round_trip_in_small_chunks():
    named = tensors()
    requests = list(push_requests(7, named, chunk_bytes=16))
    assert len(requests) > len(named) + 1
    pushed = PushedWeights(iter(requests), max_tensor_bytes=1 << 20)
    assert pushed.version == 7 and pushed.specs == specs_of(named)
    got = dict(pushed.tensors())
    assert all(torch.equal(got[n], t) for n, t in named.items())


def test_push_stream_errors_name_the_field():
    named = tensors()
    requests = list(push_requests(7, named, chunk_bytes=16))
    with pytest.raises(CodecError, match="^chunk: the first message"):
        PushedWeights(iter(requests[1:]), 1 << 20)
    with pytest.raises(CodecError, match="^chunk: stream ended inside tensor"):
        list(PushedWeights(iter(requests[:3]), 1 << 20).tensors())


class _RecordingGroup:
    """Rank 0 of a weight group that records what it broadcasts (a copy and the address)."""

    rank, device = 0, torch.device("cpu")
    segment = None  # no shared-memory plane: every bucket is broadcast

    def __init__(self) -> None:
        self.sent: list[tuple[int, torch.Tensor]] = []

    def broadcast(self, t: torch.Tensor, check_store: bool = True) -> None:
        self.sent.append((t.data_ptr(), t.clone()))


def test_a_tensor_alone_in_its_bucket_is_sent_from_its_own_memory():
    from quartet.weightsync import WeightSender, specs_of
    from quartet.weightsync.buckets import as_bytes

    g = torch.Generator().manual_seed(0)
    tensors = {"embed": torch.randn(64, 32, generator=g),  # 8 KiB: alone in a 4 KiB plan
               "a": torch.randn(100, generator=g), "b": torch.randn(200, generator=g)}
    group = _RecordingGroup()
    WeightSender(group, bucket_bytes=4096).send(3, tensors, specs_of(tensors))
    plan = plan_buckets(specs_of(tensors), 4096)
    assert [len(b.specs) for b in plan] == [1, 2]
    (embed_ptr, embed_sent), (_, packed_sent) = group.sent[2:]  # after header and sizes
    assert embed_ptr == tensors["embed"].data_ptr()  # no copy into a packing buffer
    assert torch.equal(embed_sent, as_bytes(tensors["embed"]))
    got = dict(unpack_bucket(plan[1], packed_sent))
    assert torch.equal(got["a"], tensors["a"]) and torch.equal(got["b"], tensors["b"])
