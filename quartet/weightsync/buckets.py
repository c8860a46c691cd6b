"""Bucketing: many tensors packed into few flat byte buffers, one broadcast per bucket.

One collective per parameter is the known bottleneck of weight sync (hundreds of small
calls, each with its own latency); a bucket of ~hundreds of MB amortises it. Every tensor
starts at an `ALIGN_BYTES` boundary so a receiver can view it in place with its dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from quartet.weightsync.specs import TensorSpec

DEFAULT_BUCKET_BYTES = 64 << 20
ALIGN_BYTES = 64


def _align(n: int) -> int:
    return (n + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


@dataclass(frozen=True)
class Bucket:
    """Consecutive tensors of a manifest and where each starts in the bucket's buffer."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...]
    nbytes: int


def plan_buckets(specs: Sequence[TensorSpec], bucket_bytes: int) -> list[Bucket]:
    """Splits the manifest, in order, into buckets of at most `bucket_bytes`.

    A tensor larger than `bucket_bytes` travels alone in a bucket of its own size. The plan
    depends only on (specs, bucket_bytes), so both ends compute the same one.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes: must be > 0, got {bucket_bytes}")
    buckets: list[Bucket] = []
    cur: list[TensorSpec] = []
    offs: list[int] = []
    size = 0
    for spec in specs:
        start = _align(size)
        if cur and start + spec.nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(cur), tuple(offs), size))
            cur, offs, start = [], [], 0
        cur.append(spec)
        offs.append(start)
        size = start + spec.nbytes
    if cur:
        buckets.append(Bucket(tuple(cur), tuple(offs), size))
    return buckets


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view (or contiguous copy) of a tensor's data."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8)


def pack_bucket(
    bucket: Bucket, tensors: Sequence[torch.Tensor], buffer: torch.Tensor
) -> torch.Tensor:
    """Copies `tensors` (matching `bucket.specs`) into `buffer[:bucket.nbytes]` and returns it."""
    out = buffer[: bucket.nbytes]
    for spec, off, t in zip(bucket.specs, bucket.offsets, tensors, strict=True):
        if spec.nbytes:
            out[off : off + spec.nbytes].copy_(as_bytes(t), non_blocking=True)
    return out


def unpack_bucket(bucket: Bucket, buffer: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into a received bucket buffer; valid until the buffer is reused."""
    for spec, off in zip(bucket.specs, bucket.offsets, strict=True):
        raw = buffer[off : off + spec.nbytes]
        yield spec.name, raw.view(spec.dtype).reshape(spec.shape)


def segment_offsets(plan: Sequence[Bucket]) -> tuple[list[int], int]:
    """Where each bucket starts in a shared-memory segment holding the whole session (one
    after another, each aligned), and the bytes they take together."""
    starts, end = [], 0
    for bucket in plan:
        start = _align(end)
        starts.append(start)
        end = start + bucket.nbytes
    return starts, end


def chunk_ranges(nbytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) byte ranges of at most `chunk_bytes` covering a bucket of `nbytes`, in
    order (none for an empty bucket): how a bucket passes through a ring of slots."""
    return [(lo, min(lo + chunk_bytes, nbytes)) for lo in range(0, nbytes, chunk_bytes)]


def num_chunks(sizes: Sequence[int], chunk_bytes: int) -> int:
    """How many chunks a session of buckets of `sizes` takes (see `chunk_ranges`)."""
    return sum(-(-size // chunk_bytes) for size in sizes)


def pack_range(bucket: Bucket, flat: Sequence[torch.Tensor], lo: int, hi: int,
               out: torch.Tensor) -> None:
    """Writes bytes [lo, hi) of the bucket's layout (the tensors' bytes, `flat`: one
    `as_bytes` view per spec) into `out[: hi - lo]`; alignment gaps are left as they are."""
    for spec, off, raw in zip(bucket.specs, bucket.offsets, flat, strict=True):
        a, b = max(lo, off), min(hi, off + spec.nbytes)
        if a < b:
            out[a - lo : b - lo].copy_(raw[a - off : b - off])
