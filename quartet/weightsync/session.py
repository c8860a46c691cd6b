"""The wire protocol of one update session on the weight group.

rank 0 sends, in order:
  1. a header, int64[7]: MAGIC, version, manifest digest, num_buckets, bucket_bytes,
     total_bytes, segment_bytes (0: the buckets are broadcast; else the bytes of the
     group's shared-memory segment the buckets are written into, see `shm`);
  2. the size of each bucket, int64[num_buckets];
  3. each bucket as one uint8 buffer laid out by `plan_buckets(manifest, bucket_bytes)`:
     broadcast, or (segment_bytes > 0) written into the segment, bucket after bucket at
     `segment_offsets`, *before* 2, so the sizes arriving say that every bucket is written.

The header is broadcast, or all-reduced (SUM; the receivers add zeros) in a group with a
segment: that collective returns on the sender only once every receiver entered this
session, that is, finished loading the views of the previous one, so the sender never
overwrites bytes a receiver still reads.

A receiver whose own (version, manifest) disagrees with the header still receives (and
drops) every bucket, so the sender never hangs on it, and then fails its session.
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
    pack_bucket,
    plan_buckets,
    segment_offsets,
    unpack_bucket,
)
from quartet.weightsync.errors import WeightGroupAborted, WeightSyncError
from quartet.weightsync.group import WeightGroup
from quartet.weightsync.specs import (
    NamedTensors,
    TensorSpec,
    manifest_digest,
    named_items,
    specs_of,
)

log = logging.getLogger("quartet.weightsync")

MAGIC = 0x51_75_61_72_74_65_74  # "Quartet"
HEADER_LEN = 7


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
        segment = self.group.segment
        region, starts = self._segment_region(plan)
        header = torch.tensor(
            [MAGIC, version, manifest_digest(specs), len(plan), self.bucket_bytes, total,
             0 if region is None else region.numel()],
            dtype=torch.int64,
        ).to(device)
        exchange_header(self.group, header)
        filled = self._filled(plan, items)
        if region is not None:
            for (bucket, tensors), off in zip(filled, starts, strict=True):
                pack_bucket(bucket, tensors, region[off : off + bucket.nbytes])
        if plan:  # the session's later broadcasts skip the store read (see WeightGroup)
            self.group.broadcast(torch.tensor(sizes, dtype=torch.int64).to(device),
                                 check_store=False)
        if region is not None and region.numel() > self.bucket_bytes:
            # every receiver loaded its views: the pages are freed until the next session,
            # so between sessions this plane holds no more than the broadcast's one bucket
            self.group.all_reduce(torch.zeros(1, dtype=torch.int64, device=device),
                                  check_store=False)
            segment.release()
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

    def _segment_region(self, plan: Sequence[Bucket]) -> tuple[torch.Tensor | None, list[int]]:
        """The segment's bytes this session writes and where each bucket starts, or
        (None, []) when it broadcasts (no segment, or no room left in /dev/shm)."""
        segment = self.group.segment
        if segment is None or not plan:
            return None, []
        starts, nbytes = segment_offsets(plan)
        try:
            return segment.writable(nbytes), starts
        except OSError as exc:
            log.warning("weight group: no room for %d bytes in the shared segment (%s); this "
                        "session broadcasts", nbytes, exc)
            return None, []

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
    a group with a shared segment, a read-only view into the segment: valid until this
    member begins its next session (the sender writes the next one only then), so a loader
    copies it and keeps no reference past its load, and then calls `loaded()`.
    """

    def __init__(self, group: WeightGroup) -> None:
        if group.rank == 0:
            raise ValueError("rank: rank 0 of the weight group is the sender")
        self.group = group
        self.last_stats: TransferStats | None = None
        self._owes_loaded = False

    def loaded(self) -> None:
        """Says this member is done with the last session's tensors (loaded, or given up
        on). After a session through a segment larger than one bucket, rank 0 waits for
        every receiver's call, then frees the segment's pages until the next session; a
        no-op otherwise. Never raises: a group that failed meanwhile is the sender's to
        report (this member's load is complete either way)."""
        if not self._owes_loaded:
            return
        self._owes_loaded = False
        try:
            self.group.all_reduce(torch.zeros(1, dtype=torch.int64, device=self.group.device),
                                  check_store=False)
        except Exception as exc:  # noqa: BLE001 - aborted: every member leaves anyway
            log.warning("weight group: could not tell the sender the session was loaded "
                        "(%s)", exc)

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
        magic, sent_version, digest, num_buckets, bucket_bytes, total, segment_bytes = (
            header.tolist())
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
            if [b.nbytes for b in plan] != sizes:
                problems.append(f"bucket_bytes: layout differs from the sender's "
                                f"(bucket_bytes={bucket_bytes})")
            elif segment_bytes and segment_offsets(plan)[1] != segment_bytes:
                problems.append(f"segment_bytes: the sender wrote {segment_bytes} bytes, the "
                                f"layout takes {segment_offsets(plan)[1]}")
        self._owes_loaded = segment_bytes > bucket_bytes  # see `loaded`
        if problems:
            if not segment_bytes:  # written into the segment: nothing left to drain
                self._drain(sizes)
            self.loaded()  # nothing to load
            raise WeightSyncError("; ".join(problems))
        if segment_bytes:
            try:
                return self._views(version, specs, plan, total, start, segment_bytes)
            except WeightSyncError:
                self.loaded()
                raise
        return self._buckets(version, specs, plan, total, start)

    def _views(self, version, specs, plan, total, start, segment_bytes):
        """The session's tensors as views into the shared segment (written by now)."""
        segment = self.group.segment
        try:
            if segment is None:
                raise OSError("this member holds no segment")
            region = segment.readable(segment_bytes)
        except OSError as exc:
            raise WeightSyncError(f"weight group: the sender wrote version {version} into "
                                  f"its shared segment, which this member cannot read "
                                  f"({exc})") from exc
        starts, _ = segment_offsets(plan)

        def views():
            for bucket, off in zip(plan, starts, strict=True):
                yield from unpack_bucket(bucket, region[off : off + bucket.nbytes])
            self.last_stats = TransferStats(version, len(specs), len(plan), total,
                                            time.perf_counter() - start)

        return views()

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

    def _drain(self, sizes: Sequence[int]) -> None:
        if not sizes:
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
    `WeightSyncError`. Call `receiver.loaded()` once the tensors were loaded (or dropped).
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
