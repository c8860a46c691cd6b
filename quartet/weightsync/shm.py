"""The same-host data plane of the weight group: a ring of two slots in /dev/shm.

When rank 0 (the actor) and every receiver run on one host and the group is gloo (CPU), a
broadcast only copies bytes through loopback sockets: pack into a bucket, send, receive
into a fresh buffer on every receiver. Here the sender packs straight into a file in
/dev/shm that every member mapped when the group formed, and the receivers read that same
memory. The group stays the control plane (see `session.py`): the session's header, its
bucket sizes and one small all-reduce per slot written travel through it; aborts and
failures behave as on the broadcast path.

The segment is small and bounded: `RING_SLOTS` slots of `slot_bytes(bucket_bytes)` (at
most `MAX_SLOT_BYTES`). A session that fits in it is written whole and the receivers load
from read-only views, no copy (the tiny models synced every few hundred ms). A larger one
passes through the slots in turn: rank 0 writes chunk g into slot g % 2 while the
receivers copy chunk g - 1 out of the other slot into their staging buffers (the buffers
the broadcast would have received into), and the ring's pages are freed after the session.
So the plane never holds the whole model twice in the members' RSS (a tmpfs page counts in
the RSS of every process that maps it): at most two slots, e.g. 32 MiB for SmolLM2-135M's
540 MB, where the broadcast packs into one 64 MiB bucket on the sender.

Forming it (`offer_segment` on rank 0, `accept_segment` on the others, `agree_on_segment`
on all): rank 0 creates the file (mode 0600, a random token in its first bytes) and puts
{host, path, token} in the group's store; a member takes it only if the host id
(`/proc/sys/kernel/random/boot_id`) is its own, it can open the path (same /dev/shm: not
another container's) and reads the same token there. One all-reduce (MIN) tells every
member whether all took it; otherwise nobody uses it and the sessions broadcast as before.
Right after, rank 0 unlinks the path: the segment lives only as long as some member holds
its descriptor or a mapping, so a crash (SIGKILL) leaves nothing in /dev/shm. A file left
by a process killed between creating and unlinking (the formation, milliseconds to
seconds) is removed by the next `offer_segment` on the host (its creator's pid is in its
name and no longer runs).

Receivers map the segment read-only: a loader that wrote into the tensors it was handed
would fail on the spot instead of changing what the other replicas load.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import secrets
import warnings
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("quartet.weightsync")

SHM_DIR = Path("/dev/shm")
FILE_PREFIX = "quartet-weights-"
OFFER_KEY = "shm/offer"
"""Store key rank 0 writes before it counts itself in: json {host, path, token}, or ""."""
TOKEN_BYTES = 32
DATA_OFFSET = 4096
"""The segment's payload starts one page in (the token lives in the first bytes)."""
RING_SLOTS = 2
"""Slots of the ring: rank 0 writes one while the receivers copy out of the other; one
all-reduce per chunk says both "chunk g written" and "chunk g - 1 copied by everyone"."""
MAX_SLOT_BYTES = 16 << 20
"""The largest slot: with two, the plane holds at most 32 MiB in each member's RSS (the
broadcast's packing buffer is one 64 MiB bucket); a 16 MiB copy takes ~2-4 ms here, so a
chunk's all-reduce (~0.1 ms on loopback) costs a few percent of it."""


def slot_bytes(bucket_bytes: int) -> int:
    """The ring's slot size for a sender packing `bucket_bytes` buckets: never more memory
    than the bucket the broadcast would pack, never more than `MAX_SLOT_BYTES`."""
    return min(bucket_bytes, MAX_SLOT_BYTES)


def host_id() -> str:
    """This host's boot id ("" where there is none: no shared-memory plane then)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class SharedSegment:
    """One member's handle on the group's segment: its descriptor and a mapping of it.

    `writable` (rank 0) grows the segment when a session needs more room; `readable`
    (receivers) maps it read-only. Mappings are never closed explicitly: views handed out
    keep theirs alive, and a mapping outlives the descriptor; `close` drops both."""

    def __init__(self, fd: int, owner: bool) -> None:
        self._fd: int | None = fd
        self.owner = owner
        self._mapping: mmap.mmap | None = None
        self._mapped: torch.Tensor | None = None  # the whole file, as uint8
        self._released = False
        # a group dropped without `close` (a replica re-joining) must not keep the file
        self._closer = weakref.finalize(self, os.close, fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def size(self) -> int:
        """The payload bytes the segment holds now."""
        if self._fd is None:
            return 0
        return max(os.fstat(self._fd).st_size - DATA_OFFSET, 0)

    def allocated_bytes(self) -> int:
        """The memory the segment's file holds now (pages freed by `release` not counted)."""
        return 0 if self._fd is None else os.fstat(self._fd).st_blocks * 512

    def writable(self, nbytes: int) -> torch.Tensor:
        """A uint8 view of the first `nbytes` payload bytes, grown (really allocated, so a
        full /dev/shm fails here with OSError, not with SIGBUS while writing) if needed."""
        if not self.owner:
            raise ValueError("shared segment: only rank 0 writes it")
        if self._fd is None:
            raise OSError("shared segment: closed")
        if nbytes > self.size() or self._released:
            os.posix_fallocate(self._fd, 0, DATA_OFFSET + nbytes)
            self._released = False
        return self._view(nbytes, mmap.PROT_READ | mmap.PROT_WRITE)

    def release(self) -> None:
        """Frees the payload's pages (a hole punched in the file: every member's mapping
        loses them, the size stays); the next `writable` allocates them again."""
        if self._mapping is not None and self._fd is not None:
            self._mapping.madvise(mmap.MADV_REMOVE, DATA_OFFSET,
                                  len(self._mapping) - DATA_OFFSET)
            self._released = True

    def readable(self, nbytes: int) -> torch.Tensor:
        """A uint8 view of the first `nbytes` payload bytes as rank 0 wrote them; OSError
        when the segment is smaller (the sender's and this member's files differ)."""
        if self._fd is None:
            raise OSError("shared segment: closed")
        if nbytes > self.size():
            raise OSError(f"shared segment: holds {self.size()} bytes, the session needs "
                          f"{nbytes}")
        return self._view(nbytes, mmap.PROT_READ)

    def _view(self, nbytes: int, prot: int) -> torch.Tensor:
        total = DATA_OFFSET + nbytes
        if self._mapped is None or self._mapped.numel() < total:
            size = DATA_OFFSET + self.size()
            self._mapping = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED, prot=prot)
            with warnings.catch_warnings():  # read-only on receivers: deliberately
                warnings.simplefilter("ignore", UserWarning)
                self._mapped = torch.frombuffer(self._mapping, dtype=torch.uint8)
        return self._mapped[DATA_OFFSET:total]

    def close(self) -> None:
        self._fd = None
        self._mapped = self._mapping = None
        self._closer()  # closes the descriptor once


def _pid_of(name: str) -> int | None:
    head = name.removeprefix(FILE_PREFIX).split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_segments(directory: Path = SHM_DIR) -> list[Path]:
    """Removes segment files whose creator no longer runs (killed while its group formed);
    returns them."""
    removed = []
    for path in directory.glob(FILE_PREFIX + "*"):
        pid = _pid_of(path.name)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    if removed:
        log.info("removed %d stale weight segment(s) from %s", len(removed), directory)
    return removed


def segment_names(directory: Path = SHM_DIR) -> set[str]:
    """The weight segment files in `directory` now (a leak check's "before")."""
    return {p.name for p in directory.glob(FILE_PREFIX + "*")}


def segments_left(before: set[str], directory: Path = SHM_DIR) -> list[str]:
    """Segment files that appeared since `before` and that this process created or whose
    creator no longer runs: what a finished group left behind. A file a live process of
    another run still holds (tests run in parallel) is in use, not left."""
    return sorted(n for n in segment_names(directory) - before
                  if (pid := _pid_of(n)) is None or pid == os.getpid() or not _alive(pid))


class SegmentOffer:
    """Rank 0's segment while the group forms: the file exists (so members can open it)
    until `withdraw` unlinks it."""

    def __init__(self, path: Path, segment: SharedSegment) -> None:
        self.path = path
        self.segment = segment

    def withdraw(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def offer_segment(store: dist.Store, enabled: bool, directory: Path = SHM_DIR
                  ) -> SegmentOffer | None:
    """Rank 0: creates the segment and writes the offer into the group's `store` (an empty
    offer when disabled or impossible). Must run before rank 0 counts itself in."""
    offer = None
    host = host_id()
    if enabled and host and directory.is_dir():
        remove_stale_segments(directory)
        token = secrets.token_hex(TOKEN_BYTES // 2)
        path = directory / f"{FILE_PREFIX}{os.getpid()}-{token[:16]}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            log.info("weight group: no shared-memory segment (%s); broadcasting", exc)
        else:
            try:
                os.pwrite(fd, token.encode(), 0)
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            offer = SegmentOffer(path, SharedSegment(fd, owner=True))
            store.set(OFFER_KEY, json.dumps({"host": host, "path": str(path),
                                             "token": token}))
    if offer is None:
        store.set(OFFER_KEY, "")
    return offer


def accept_segment(store: dist.Store, enabled: bool) -> SharedSegment | None:
    """A receiver: opens rank 0's segment when it is on this host and `enabled`; None
    (and why, in the log) otherwise."""
    raw = store.get(OFFER_KEY).decode()
    if not raw or not enabled:
        return None
    offer = json.loads(raw)
    if offer["host"] != host_id():
        log.info("weight group: the sender runs on another host; broadcasting")
        return None
    try:
        fd = os.open(offer["path"], os.O_RDONLY)
    except OSError as exc:
        log.info("weight group: cannot open the sender's segment %s (%s: another /dev/shm); "
                 "broadcasting", offer["path"], type(exc).__name__)
        return None
    if os.pread(fd, TOKEN_BYTES, 0).decode(errors="replace") != offer["token"]:
        os.close(fd)
        log.info("weight group: %s is not the sender's segment; broadcasting", offer["path"])
        return None
    return SharedSegment(fd, owner=False)
