"""Giving tensors' memory back to the system between the phases that use them, and taking
it again in place (the rollout's weights and KV cache, the reference's weights).

Why storages, in place: weights and KV caches are referenced from many places (modules,
views, an engine's forward context, tied parameters). Resizing each distinct storage to 0
bytes frees its memory while every tensor and view keeps pointing at the same storage object;
resizing it back allocates the same number of bytes again (at a new address) and every holder
sees the new memory. PyTorch's FSDP frees unsharded parameters the same way. The contents are
lost: the caller refills them (the rollout with the next weight update; the reference from
the file `SpilledStorages` wrote before the first release).

Large allocations (above glibc's mmap threshold: every weight matrix of a 135M model) go
straight back to the system on free; the caller trims the heap (`quartet.heap`) for the rest.

Zeroing memory allocated again (`StorageSet.zero_`) gives its whole pages back to the kernel
(`madvise(MADV_DONTNEED)`: they read as zeros and become resident only when written) instead
of writing zeros into every byte. Same contents; what differs is residency: a rollout's KV
cache comes back zeroed on each wake, and a `memset` made all of it resident before the first
token, where vLLM only ever writes the blocks, and within a block the token slots, that the
call's requests reach (issue 13, eighth pass: the partly filled last block of each row).
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from quartet.heap import libc_function

SPILL_ALIGN = 4096
"""Each storage starts at a page boundary in the spill file."""
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MADV_DONTNEED = 4
"""Linux: later reads of a private anonymous page see zeros (a page fault maps a zero page)."""


def private_anonymous_ranges() -> list[tuple[int, int]]:
    """This process's private anonymous mappings (`/proc/self/maps`: no file, `p` in the
    permissions; the heap counts), adjacent ones merged, in address order. Only there does
    MADV_DONTNEED mean zeros: a file mapping reads the file back, a shared one (torch's
    `share_memory_`, still a resizable storage) its shared pages. Empty where unreadable."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges: list[tuple[int, int]] = []
    for line in lines:
        fields = line.split()
        path = fields[5] if len(fields) > 5 else ""
        if fields[1][3] != "p" or path not in ("", "[heap]"):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


def zero_anonymous(views: list[torch.Tensor]) -> None:
    """Zeroes contiguous uint8 `views`: where a view's whole pages lie in private anonymous
    memory (`private_anonymous_ranges`: what torch's CPU allocator returns), through
    MADV_DONTNEED without touching them and the partial pages at either end with a write;
    anywhere else (or where madvise is missing or refuses) by writing every byte."""
    madvise = (libc_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
               if sys.platform == "linux" else None)
    anonymous = private_anonymous_ranges() if madvise is not None else []
    for view in views:
        start, n = view.data_ptr(), view.numel()
        first = -(-start // PAGE_BYTES) * PAGE_BYTES
        last = (start + n) // PAGE_BYTES * PAGE_BYTES
        if (last - first < PAGE_BYTES
                or not any(lo <= first and last <= hi for lo, hi in anonymous)
                or madvise(first, last - first, MADV_DONTNEED) != 0):
            view.zero_()
            continue
        view[:first - start].zero_()
        view[last - start:].zero_()


def _byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole of `storage` (its bytes, writable)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))


def _buffer(storage: torch.UntypedStorage) -> memoryview:
    """The bytes of a CPU `storage` as a writable buffer for file I/O. Not through numpy:
    exporting a storage to numpy marks it not resizable for good."""
    return memoryview((ctypes.c_char * storage.nbytes()).from_address(storage.data_ptr())
                      ).cast("B")


class StorageSet:
    """The distinct, non-empty storages under some tensors; released (0 bytes) or allocated.

    Tensors that share a storage (tied weights, views, one KV allocation viewed per layer)
    count it once. `release` frees them all, `reallocate` allocates them again with undefined
    contents.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self._storages: dict[int, torch.UntypedStorage] = {}
        self._nbytes: dict[int, int] = {}
        self._users: dict[int, list[torch.Tensor]] = {}
        for t in tensors:
            storage = t.untyped_storage()
            nbytes = storage.nbytes()
            if nbytes == 0:
                continue
            key = storage.data_ptr()
            if key not in self._storages:
                self._storages[key] = storage
                self._nbytes[key] = nbytes
                self._users[key] = []
            self._users[key].append(t)
        self.released = False

    @property
    def nbytes(self) -> int:
        """Bytes the storages hold when allocated."""
        return sum(self._nbytes.values())

    def __len__(self) -> int:
        return len(self._storages)

    def items(self) -> list[tuple[torch.UntypedStorage, int]]:
        """(storage, its allocated size) in a stable order."""
        return [(self._storages[k], self._nbytes[k]) for k in self._storages]

    def make_resizable(self) -> None:
        """Gives each storage that cannot be resized (a memory-mapped file: weights a
        safetensors checkpoint maps) fresh, resizable memory of the same size, repointing
        every tensor on it. The contents are not copied: call it after saving them."""
        for key, storage in list(self._storages.items()):
            if storage.resizable():
                continue
            fresh = torch.UntypedStorage(self._nbytes[key], device=storage.device)
            for t in self._users[key]:
                t.data = torch.empty(0, dtype=t.dtype, device=t.device).set_(
                    fresh, t.storage_offset(), t.size(), t.stride())
            self._storages[key] = fresh

    def release(self) -> int:
        """Frees every storage; returns the bytes freed (0 when already released)."""
        if self.released:
            return 0
        for storage, _ in self.items():
            if not storage.resizable():
                raise ValueError("storage: memory-mapped from a file and not resizable; "
                                 "call make_resizable() first")
            storage.resize_(0)
        self.released = True
        return self.nbytes

    def reallocate(self) -> None:
        """Allocates every storage again (contents undefined); a no-op when allocated."""
        if not self.released:
            return
        for storage, nbytes in self.items():
            storage.resize_(nbytes)
        self.released = False

    def zero_(self) -> None:
        """Zeroes every storage; whole pages of private anonymous memory are handed back to
        the kernel rather than written (`zero_anonymous`)."""
        zero_anonymous([_byte_view(storage) for storage, _ in self.items()])


def filesystem_type(path: str | os.PathLike) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts; "" when unknown)."""
    target = os.path.realpath(path)
    best, kind = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


class SpilledStorages:
    """A `StorageSet` whose contents wait in a file while released: written once, at the
    first release, and read back into the re-allocated storages by every `restore`. Exact:
    the same bytes come back.

    The file is created unlinked in `directory` (it vanishes with the process). Read back
    soon after it was written, it comes from the kernel's page cache, which the kernel may
    drop under memory pressure (then `restore` reads the disk). A memory filesystem (tmpfs)
    is refused: there the spilled bytes would stay in RAM, and nothing would be saved.
    """

    def __init__(self, tensors: Iterable[torch.Tensor], directory: str | os.PathLike,
                 what: str = "tensors") -> None:
        self.storages = StorageSet(tensors)
        self.directory = Path(directory)
        self.what = what
        for storage, _ in self.storages.items():
            if storage.device.type != "cpu":
                raise ValueError(f"{what}: spilling to a file needs tensors in CPU memory, "
                                 f"got {storage.device}")
        kind = filesystem_type(self.directory)
        if kind in MEMORY_FILESYSTEMS:
            raise ValueError(f"{what}: the spill directory {self.directory} is on {kind}, "
                             "i.e. in RAM: releasing would save nothing; give a directory "
                             "on a disk")
        self._file: io.FileIO | None = None
        self._offsets: list[int] = []

    @property
    def released(self) -> bool:
        return self.storages.released

    def _spill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, _ = tempfile.mkstemp(dir=self.directory, prefix="quartet-spill-")
        os.unlink(_)  # the open descriptor keeps it; nothing to clean up afterwards
        f = io.FileIO(fd, "r+")
        offset = 0
        for storage, nbytes in self.storages.items():
            offset = -(-offset // SPILL_ALIGN) * SPILL_ALIGN
            f.seek(offset)
            view = _buffer(storage)
            written = 0
            while written < nbytes:
                written += f.write(view[written:])
            self._offsets.append(offset)
            offset += nbytes
        f.flush()
        self._file = f
        self.storages.make_resizable()

    def release(self) -> int:
        """Frees the storages (spilling them first, the first time); returns bytes freed."""
        if self.released:
            return 0
        if self._file is None:
            self._spill()
        return self.storages.release()

    def restore(self) -> None:
        """Re-allocates the storages and reads their bytes back; a no-op when held."""
        if not self.released:
            return
        assert self._file is not None
        self.storages.reallocate()
        for (storage, nbytes), offset in zip(self.storages.items(), self._offsets, strict=True):
            view = _buffer(storage)
            self._file.seek(offset)
            done = 0
            while done < nbytes:
                n = self._file.readinto(view[done:])
                if not n:
                    raise OSError(f"{self.what}: the spill file ended at {offset + done} "
                                  f"bytes, expected {nbytes} from {offset}")
                done += n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
