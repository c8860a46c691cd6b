"""Giving the heap memory a finished phase freed back to the system (glibc `malloc_trim`).

A role process alternates heavy phases with idle waits: the reference scores, then waits
while the actor trains; the rollout generates, then waits. The tensors a phase allocates
below glibc's mmap threshold (which glibc raises up to 32 MiB after the first large frees:
every activation of a 135M model qualifies) come from malloc arenas, one per thread that
allocated, and glibc keeps their freed pages mapped for reuse. Those pages still count in
the process's RSS/PSS during the idle wait, i.e. exactly while another role peaks.
`malloc_trim(0)` returns every arena's free pages; it is called when a phase ends, not
inside one, so it costs one pass over the arenas per phase.

Where glibc is absent (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Returns freed heap pages of every malloc arena to the system; True when glibc gave
    some back (False also where there is no glibc)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


class PhaseTrimmer:
    """Counts a role's heavy calls in flight; the last one to end trims the heap. Calls that
    overlap (the rollout's concurrent Generate streams, the reference's scoring shards) do
    not trim under each other's feet: the trim runs once the role goes idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    @contextlib.contextmanager
    def phase(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                idle = self._active == 0
            if idle:
                release_free_heap()
