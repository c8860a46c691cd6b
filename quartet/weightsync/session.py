"""The wire protocol of one update session on the weight group.

rank 0 sends, in order:
  1. a header, int64[8]: MAGIC, version, manifest digest, num_buckets, bucket_bytes,
     total_bytes, segment_bytes, slot_bytes. segment_bytes 0: the buckets are broadcast;
     else they go through the group's shared-memory segment (see `shm`), whole
     (slot_bytes 0: the session fits in the ring) or through its slots (slot_bytes > 0);
  2. the size of each bucket, int64[num_buckets];
  3. each bucket as one uint8 buffer laid out by `plan_buckets(manifest, bucket_bytes)`:
     - broadcast;
     - or written whole into the segment, bucket after bucket at `segment_offsets`,
       *before* 2, so the sizes arriving say that every bucket is written;
     - or, after 2, cut into chunks of slot_bytes (`chunk_ranges`), chunk g written into
       slot g % RING_SLOTS, each followed by one all-reduce (SUM of zeros) that every
       member enters: rank 0 once chunk g is written, a receiver once it copied chunk
       g - 1 out (so rank 0 may then write chunk g + 1 over it). One last all-reduce says
       every receiver copied the last chunk; rank 0 then frees the ring's pages.

The header is broadcast, or all-reduced (SUM; the receivers add zeros) in a group with a
segment: that collective returns on the sender only once every receiver entered this
session, that is, finished loading the views of the previous one, so the sender never
overwrites bytes a receiver still reads.

A receiver whose own (version, manifest) disagrees with the header still receives (and
drops) every bucket, or takes part in every chunk's all-reduce, so the sender never hangs
on it, and then fails its session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from quartet.weightsync.buckets import (
    DEFAULT_BUCKET_BYTES,
    Bucket,
    as_bytes,
    chunk_ranges,
    num_chunks,
    pack_bucket,
    pack_range,
    plan_buckets,
    segment_offsets,
    unpack_bucket,
)
from quartet.weightsync.errors import WeightGroupAborted, WeightSyncError
from quartet.weightsync.group import WeightGroup
from quartet.weightsync.shm import RING_SLOTS, slot_bytes
from quartet.weightsync.specs import (
    NamedTensors,
    TensorSpec,
    manifest_digest,
    named_items,
    specs_of,
)

log = logging.getLogger("quartet.weightsync")

MAGIC = 0x51_75_61_72_74_65_74  # "Quartet"
HEADER_LEN = 8


def chunk_done(group: WeightGroup) -> None:
    """The all-reduce that follows each chunk through the ring (see above)."""
    group.all_reduce(torch.zeros(1, dtype=torch.int64, device=group.device),
                     check_store=False)


def exchange_header(group: WeightGroup, header: torch.Tensor) -> None:
    """Step 1 of a session: the sender's `header` reaches every member (receivers pass
    zeros): broadcast, or all-reduced when the group has a segment (see above)."""
    if group.segment is not None:
        group.all_reduce(header)
    else:
        group.broadcast(header)


@dataclass(frozen=True)
class TransferStats:
    version: int
    num_tensors: int
    num_buckets: int
    total_bytes: int
    seconds: float

    @property
    def gbytes_per_s(self) -> float:
        return self.total_bytes / max(self.seconds, 1e-9) / 1e9


class WeightSender:
    """Rank 0's end: broadcasts a versioned set of named tensors in buckets.

    Typical use on the actor (after every receiver was told `begin(version, manifest,
    bucket_bytes)` over gRPC):

        sender = WeightSender(group, bucket_bytes)
        sender.send(version, model.state_dict())
    """

    def __init__(self, group: WeightGroup, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        if group.rank != 0:
            raise ValueError(f"rank: the sender must be rank 0 of the weight group, "
                             f"got {group.rank}")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes: must be > 0, got {bucket_bytes}")
        self.group = group
        self.bucket_bytes = bucket_bytes

    def send(
        self,
        version: int,
        named_tensors: NamedTensors,
        specs: Sequence[TensorSpec] | None = None,
    ) -> TransferStats:
        """Sends every tensor (broadcast, or written into the group's shared segment);
        blocks until the last bucket left.

        With `specs` given, `named_tensors` may be a lazy iterable (e.g. ZeRO-3 gathering one
        parameter at a time): at most one bucket is held at once. Each tensor must match its
        spec (name, dtype, shape) in order.
        """
        start = time.perf_counter()
        if specs is None:
            materialized = list(named_items(named_tensors))
            specs = specs_of(materialized)
            items = iter(materialized)
        else:
            items = iter(named_items(named_tensors))
        plan = plan_buckets(specs, self.bucket_bytes)
        device = self.group.device
        sizes = [b.nbytes for b in plan]
        total = sum(s.nbytes for s in specs)
        region, starts, slot = self._segment_region(plan)
        header = torch.tensor(
            [MAGIC, version, manifest_digest(specs), len(plan), self.bucket_bytes, total,
             0 if region is None else region.numel(), slot],
            dtype=torch.int64,
        ).to(device)
        exchange_header(self.group, header)
        filled = self._filled(plan, items)
        if region is not None and not slot:
            for (bucket, tensors), off in zip(filled, starts, strict=True):
                pack_bucket(bucket, tensors, region[off : off + bucket.nbytes])
        if plan:  # the session's later broadcasts skip the store read (see WeightGroup)
            self.group.broadcast(torch.tensor(sizes, dtype=torch.int64).to(device),
                                 check_store=False)
        if region is not None and slot:
            self._through_ring(filled, region, slot)
        if region is None:
            # a tensor alone in its bucket is broadcast from its own memory (its bytes are
            # the bucket), so the packing buffer holds at most one bucket of several
            # tensors: the largest tensor (an embedding) does not set its size
            packed = [b.nbytes for b in plan if len(b.specs) > 1]
            buffer = torch.empty(max(packed, default=0), dtype=torch.uint8, device=device)
            for bucket, tensors in filled:
                alone = len(tensors) == 1
                self.group.broadcast(as_bytes(tensors[0]).to(device) if alone
                                     else pack_bucket(bucket, tensors, buffer),
                                     check_store=False)
        stats = TransferStats(version, len(specs), len(plan), total,
                              time.perf_counter() - start)
        log.info("sent version %d: %d tensors, %d buckets, %.1f MB in %.2fs%s", version,
                 stats.num_tensors, stats.num_buckets, total / 1e6, stats.seconds,
                 "" if region is None else " (shared memory)")
        return stats

    def _segment_region(self, plan: Sequence[Bucket]
                        ) -> tuple[torch.Tensor | None, list[int], int]:
        """The segment's bytes this session writes, where each bucket starts when it is
        written whole, and the slot size when it goes through the ring (0: whole); (None,
        [], 0) when it broadcasts (no segment, or no room left in /dev/shm)."""
        segment = self.group.segment
        if segment is None or not plan:
            return None, [], 0
        starts, nbytes = segment_offsets(plan)
        slot = slot_bytes(self.bucket_bytes)
        if nbytes > RING_SLOTS * slot:
            starts, nbytes = [], RING_SLOTS * slot
        else:
            slot = 0
        try:
            return segment.writable(nbytes), starts, slot
        except OSError as exc:
            log.warning("weight group: no room for %d bytes in the shared segment (%s); this "
                        "session broadcasts", nbytes, exc)
            return None, [], 0

    def _through_ring(self, filled: Iterator[tuple[Bucket, list[torch.Tensor]]],
                      ring: torch.Tensor, slot: int) -> None:
        """Step 3 through the ring's slots (see the module docstring); frees its pages once
        every receiver copied the last chunk."""
        g = 0
        for bucket, tensors in filled:
            flat = [as_bytes(t) for t in tensors]
            for lo, hi in chunk_ranges(bucket.nbytes, slot):
                base = (g % RING_SLOTS) * slot
                pack_range(bucket, flat, lo, hi, ring[base : base + hi - lo])
                chunk_done(self.group)
                g += 1
        chunk_done(self.group)
        segment = self.group.segment  # None only once the group was abandoned
        if segment is not None:
            segment.release()

    @staticmethod
    def _filled(plan: Sequence[Bucket], items: Iterator[tuple[str, torch.Tensor]]
                ) -> Iterator[tuple[Bucket, list[torch.Tensor]]]:
        """Each bucket with its tensors from `items`, each checked against its spec."""
        for bucket in plan:
            tensors = []
            for spec in bucket.specs:
                try:
                    name, t = next(items)
                except StopIteration:
                    raise WeightSyncError(
                        f"named_tensors: ended before {spec.name!r}; receivers will time out"
                    ) from None
                got = TensorSpec.of(name, t)
                if got != spec:
                    raise WeightSyncError(
                        f"named_tensors: got {got.describe()} where the manifest has "
                        f"{spec.describe()}; receivers will time out"
                    )
                tensors.append(t)
            yield bucket, tensors


class WeightReceiver:
    """A rollout worker's end: yields the named tensors of a session as buckets arrive.

    Each yielded tensor is a view into its bucket's own buffer (a fresh buffer per bucket, so
    a loader may keep references across buckets, as vLLM's layer-wise reload does), or, in
    a session written whole into the group's shared segment, a read-only view into the
    segment: valid until this member begins its next session (the sender writes the next
    one only then), so a loader copies it and keeps no reference past its load.
    """

    def __init__(self, group: WeightGroup) -> None:
        if group.rank == 0:
            raise ValueError("rank: rank 0 of the weight group is the sender")
        self.group = group
        self.last_stats: TransferStats | None = None

    def receive(
        self, version: int, specs: Sequence[TensorSpec]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Reads the session header now and returns an iterator over the tensors.

        Raises `WeightSyncError` here, before any tensor is yielded (and after draining the
        sender's buckets), when the sender's header disagrees with (version, specs). A
        consumer that stops early still drains the rest, so the sender never hangs.
        """
        start = time.perf_counter()
        device = self.group.device
        header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=device)
        exchange_header(self.group, header)
        (magic, sent_version, digest, num_buckets, bucket_bytes, total, segment_bytes,
         slot) = header.tolist()
        if magic != MAGIC:
            raise WeightSyncError(f"weight group: bad header {header.tolist()} (not a quartet "
                                  "sender, or sessions out of step)")
        sizes_t = torch.zeros(num_buckets, dtype=torch.int64, device=device)
        if num_buckets:
            self.group.broadcast(sizes_t, check_store=False)
        sizes = sizes_t.tolist()
        problems = []
        if sent_version != version:
            problems.append(f"version: the sender sends {sent_version}, this session "
                            f"expects {version}")
        if digest != manifest_digest(specs):
            problems.append("tensors: the sender's manifest differs from the one given to "
                            "begin (names, dtypes, shapes or order)")
        plan = []
        if not problems:
            plan = plan_buckets(specs, bucket_bytes)
            layout = RING_SLOTS * slot if slot else segment_offsets(plan)[1]
            if [b.nbytes for b in plan] != sizes:
                problems.append(f"bucket_bytes: layout differs from the sender's "
                                f"(bucket_bytes={bucket_bytes})")
            elif segment_bytes and layout != segment_bytes:
                problems.append(f"segment_bytes: the sender wrote {segment_bytes} bytes, the "
                                f"layout takes {layout}")
        region = None
        if segment_bytes and not problems:
            try:
                if self.group.segment is None:
                    raise OSError("this member holds no segment")
                region = self.group.segment.readable(segment_bytes)
            except OSError as exc:
                problems.append(f"weight group: the sender wrote version {sent_version} into "
                                f"its shared segment, which this member cannot read ({exc})")
        if problems:
            self._drain(sizes, segment_bytes, slot)
            raise WeightSyncError("; ".join(problems))
        if slot:
            return self._through_ring(version, specs, plan, total, start, region, slot)
        if segment_bytes:
            return self._views(version, specs, plan, total, start, region)
        return self._buckets(version, specs, plan, total, start)

    def _views(self, version, specs, plan, total, start, region):
        """The session's tensors as views into the shared segment (written by now)."""
        starts, _ = segment_offsets(plan)
        for bucket, off in zip(plan, starts, strict=True):
            yield from unpack_bucket(bucket, region[off : off + bucket.nbytes])
        self.last_stats = TransferStats(version, len(specs), len(plan), total,
                                        time.perf_counter() - start)

    def _through_ring(self, version, specs, plan, total, start, ring, slot):
        """The session's buckets copied chunk by chunk out of the ring's slots into fresh
        buffers, as the broadcast receives them (see the module docstring)."""
        g = 0
        broken = False
        try:
            for bucket in plan:
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.group.device)
                for lo, hi in chunk_ranges(bucket.nbytes, slot):
                    try:
                        chunk_done(self.group)  # chunk g is written, g - 1 copied
                    except Exception:
                        broken = True
                        raise
                    base = (g % RING_SLOTS) * slot
                    buffer[lo:hi].copy_(ring[base : base + hi - lo])
                    g += 1
                yield from unpack_bucket(bucket, buffer)
        finally:
            if not broken:  # also when the consumer stopped early: the sender must not hang
                for _ in range(num_chunks([b.nbytes for b in plan], slot) - g + 1):
                    chunk_done(self.group)
        self.last_stats = TransferStats(version, len(specs), len(plan), total,
                                        time.perf_counter() - start)

    def _buckets(self, version, specs, plan, total, start):
        received = 0
        broken = False
        try:
            for bucket in plan:
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.group.device)
                try:
                    self.group.broadcast(buffer, check_store=False)
                except Exception:
                    broken = True
                    raise
                received += 1
                yield from unpack_bucket(bucket, buffer)
        finally:
            if received < len(plan) and not broken:
                # The consumer stopped early: keep the sender from hanging on this rank.
                self._drain([b.nbytes for b in plan[received:]])
        self.last_stats = TransferStats(version, len(specs), len(plan), total,
                                        time.perf_counter() - start)

    def _drain(self, sizes: Sequence[int], segment_bytes: int = 0, slot: int = 0) -> None:
        """Takes part in the rest of a session this member will not load: the buckets'
        broadcasts, or every chunk's all-reduce (nothing, for a session written whole)."""
        if slot:
            for _ in range(num_chunks(sizes, slot) + 1):
                chunk_done(self.group)
            return
        if not sizes or segment_bytes:
            return
        scratch = torch.empty(max(sizes), dtype=torch.uint8, device=self.group.device)
        for size in sizes:
            self.group.broadcast(scratch[:size])


def receive_staged(receiver: WeightReceiver, version: int, specs: Sequence[TensorSpec]
                   ) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a session, received in full before any is loaded.

    A receiver that loads while it receives leaves mixed weights when the sender dies half
    way; staging the whole session first (one extra copy of the weights for its duration)
    means a failed transfer touches nothing. Any failure of the group surfaces as
    `WeightSyncError`.
    """
    try:
        return list(receiver.receive(version, specs))
    except WeightGroupAborted as exc:
        raise WeightSyncError(f"weight group: transfer of version {version} failed "
                              f"({exc}); nothing was loaded") from exc
    except WeightSyncError:
        raise
    except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise plain RuntimeErrors
        raise WeightSyncError(f"weight group: transfer of version {version} failed "
                              f"({type(exc).__name__}: {exc}); nothing was loaded") from exc
