"""Giving the heap memory a finished phase freed back to the system (glibc `malloc_trim`).

A role process alternates heavy phases with idle waits: the reference scores, then waits
while the actor trains; the rollout generates, then waits. The tensors a phase allocates
below glibc's mmap threshold (which glibc raises up to 32 MiB after the first large frees:
every activation of a 135M model qualifies) come from malloc arenas, one per thread that
allocated, and glibc keeps their freed pages mapped for reuse. Those pages still count in
the process's RSS/PSS during the idle wait, i.e. exactly while another role peaks.
`malloc_trim(0)` returns every arena's free pages; `PhaseTrimmer` calls it from a background
thread once a role has stayed idle for a moment after a phase, not inside one and not before
the phase's reply leaves, so it costs one pass over the arenas per idle wait.

A trim is not free, though: the pages it returns are the ones the role's next phase
allocates again, and each comes back as a page fault (a zeroed page each time). Measured on
the overhead bench's tiny model (2-core host, `docs/benchmarks.md`, fifth pass), trimming a
few tens of MiB per role after every phase cost ~40 ms of a ~0.42 s PPO iteration, mostly
the actor faulting its train-step memory back in. So a trim is skipped while the arenas
hold less than `DEFAULT_MIN_FREE_BYTES` in free chunks (glibc's `mallinfo2`: an upper bound
on what a trim can return): below that the memory is small next to any model's footprint,
while the roles of a real model (SmolLM2: hundreds of MiB of freed activations) still trim.

Where glibc is absent (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

DEFAULT_SETTLE_S = 0.05
"""How long a role stays idle before its heap is trimmed (see `PhaseTrimmer`)."""
DEFAULT_MIN_FREE_BYTES = 128 << 20
"""Free heap below which a trim is skipped: not worth the page faults (module docstring)."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def libc_function(name: str, argtypes: tuple = (), restype: Any = ctypes.c_int):
    """The C library's function `name` with its signature set, or None where there is no
    such library or function (musl, macOS, an older glibc)."""
    lib = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(lib, use_errno=True), name) if lib else None
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn


def _malloc_trim():
    return libc_function("malloc_trim", (ctypes.c_size_t,))


def _mallinfo2():
    return libc_function("mallinfo2", (), _MallInfo2)  # glibc >= 2.33


def free_heap_bytes() -> int | None:
    """Bytes in the free chunks of every malloc arena (pages a trim already returned
    included); None where glibc's `mallinfo2` is missing."""
    fn = _mallinfo2()
    return int(fn().fordblks) if fn is not None else None


def release_free_heap(min_free_bytes: int = 0) -> bool:
    """Returns freed heap pages of every malloc arena to the system; True when glibc gave
    some back (False also where there is no glibc, or when the arenas hold less than
    `min_free_bytes` free: then nothing is trimmed)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    if min_free_bytes > 0:
        free = free_heap_bytes()
        if free is not None and free < min_free_bytes:
            return False
    return bool(fn(0))


class PhaseTrimmer:
    """Trims the heap once a role has gone idle, off the calls' critical path.

    Counts a role's heavy calls in flight. When the last one ends, a background thread
    waits `settle_s`; if no call started meanwhile, it trims (the trim releases the GIL).
    So the reply is sent without waiting for the trim, and the short gaps inside a phase
    (the actor between two mini-batches while the critic finishes, the rollout between a
    weight load and the next generation) do not trim memory the next call would fault back
    in at once; the long idle waits between phases, where the memory counts, still trim.
    Calls that overlap (the rollout's concurrent Generate streams, the reference's scoring
    shards) do not trim under each other's feet. A call that starts while a trim runs
    proceeds; it may wait for one arena's lock for the rest of that trim. A trim with less
    than `min_free_bytes` of free heap is skipped (module docstring)."""

    def __init__(self, settle_s: float = DEFAULT_SETTLE_S,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> None:
        self.settle_s = settle_s
        self.min_free_bytes = min_free_bytes
        """A trim with less free heap than this is skipped (`release_free_heap`)."""
        self._cond = threading.Condition()
        self._active = 0
        self._idle_since: float | None = None
        """When the role last went idle with a trim owed; None: nothing to trim."""
        self._now = False
        """A trim asked for at once (`trim_now`), busy or not."""
        self._thread: threading.Thread | None = None
        self.trims = 0
        """Trims attempted so far, skipped ones included (for logs and tests)."""

    @contextlib.contextmanager
    def phase(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._idle_since = time.monotonic()
                    self._start_thread()
                    self._cond.notify()

    def trim_now(self) -> None:
        """Trims as soon as the background thread runs, without waiting for the role to go
        idle: for a call that follows a heavy phase at once and holds memory of its own
        meanwhile (the actor's weight broadcast right after its last TrainStep: the freed
        activations would otherwise stay mapped through the sync, while the rollout reloads
        its weights). The caller does not wait for the trim."""
        with self._cond:
            self._now = True
            self._start_thread()
            self._cond.notify()

    def _start_thread(self) -> None:  # with self._cond held
        if self._thread is None:
            self._thread = threading.Thread(target=self._trim_when_idle, name="heap-trim",
                                            daemon=True)
            self._thread.start()

    def _trim_when_idle(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._now:
                        break
                    if self._active == 0 and self._idle_since is not None:
                        wait = self._idle_since + self.settle_s - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:  # busy (its end owes a trim) or nothing owed
                        self._cond.wait()
                self._idle_since = None
                self._now = False
            release_free_heap(self.min_free_bytes)
            with self._cond:
                self.trims += 1
