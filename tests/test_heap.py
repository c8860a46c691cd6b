"""`quartet.heap.release_free_heap`: freed arena pages leave the RSS only when trimmed."""

import subprocess
import sys
import textwrap
import time

# 64 MiB in 64 KiB blocks (below glibc's mmap threshold: they come from the heap), all freed
# but the last, which pins the heap's top so glibc cannot shrink it on its own.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from quartet.heap import free_heap_bytes, release_free_heap
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    blocks = [libc.malloc(64 << 10) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    free_held = free_heap_bytes()
    for b in blocks[:-1]:
        libc.free(b)
    freed = (free_heap_bytes() - free_held) / (1 << 20)
    before = rss_mb()
    released = release_free_heap(int(sys.argv[1]))
    print(before, rss_mb(), released, freed)
""")


def trim_probe(min_free_bytes: int) -> tuple[float, float, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(min_free_bytes)],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    freed_mb = float(out[3])
    assert 60 < freed_mb < 70, freed_mb  # free_heap_bytes saw the 64 MiB freed
    return float(out[0]), float(out[1]), out[2]


def test_trim_returns_freed_heap_pages_that_glibc_kept():
    before, after, released = trim_probe(min_free_bytes=32 << 20)  # 64 MiB free: above it
    assert released == "True"
    assert before - after > 48, (before, after)  # most of the freed 64 MiB left the RSS


def test_trim_is_skipped_below_the_free_heap_threshold():
    """Pages a trim returns are faulted back in by the next phase: with less free heap than
    the threshold the trim is not worth it, and the pages stay."""
    before, after, released = trim_probe(min_free_bytes=1 << 30)  # 64 MiB free: below it
    assert released == "False"
    assert before - after < 8, (before, after)


def test_the_trimmer_passes_its_threshold(monkeypatch):
    import quartet.heap as heap

    asked = []
    monkeypatch.setattr(heap, "release_free_heap", lambda min_free: asked.append(min_free))
    trimmer = heap.PhaseTrimmer(settle_s=0.01, min_free_bytes=123)
    with trimmer.phase():
        pass
    wait_for(lambda: asked == [123])
    assert heap.PhaseTrimmer().min_free_bytes == heap.DEFAULT_MIN_FREE_BYTES


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_overlapping_phases_trim_once_after_the_last_one_ends(monkeypatch):
    import quartet.heap as heap

    trims = []
    monkeypatch.setattr(heap, "release_free_heap", lambda *_: trims.append(1) or True)
    trimmer = heap.PhaseTrimmer(settle_s=0.05)
    with trimmer.phase():
        with trimmer.phase():
            pass
        time.sleep(0.2)
        assert trims == []  # the outer call is still running
    assert trims == []  # not on the call's path: the trim comes after it returned
    wait_for(lambda: trims == [1])
    try:
        with trimmer.phase():
            raise RuntimeError("a failed call")
    except RuntimeError:
        pass
    wait_for(lambda: trims == [1, 1])  # a failed call still ends its phase


def test_a_call_within_the_settle_time_postpones_the_trim(monkeypatch):
    """Back-to-back calls (mini-batches) do not trim between them: only the idle wait after
    the last one does."""
    import quartet.heap as heap

    trims = []
    monkeypatch.setattr(heap, "release_free_heap", lambda *_: trims.append(time.monotonic()))
    # the gaps between calls (0.05 s) stay far below the settle time even on a loaded host
    trimmer = heap.PhaseTrimmer(settle_s=0.5)
    for _ in range(3):
        with trimmer.phase():
            time.sleep(0.02)
        last_end = time.monotonic()  # read after the phase ended: the trim is >= 0.5 s later
        time.sleep(0.05)
    wait_for(lambda: trimmer.trims == 1)
    time.sleep(0.6)
    assert len(trims) == 1
    assert trims[0] - last_end >= 0.45


def test_trim_now_trims_while_a_call_is_in_flight(monkeypatch):
    """The actor's weight broadcast asks for the trim its train phase owes at once: it runs
    during the call, not after it (the idle trim would come only once the sync ended)."""
    import quartet.heap as heap

    trims = []
    monkeypatch.setattr(heap, "release_free_heap", lambda *_: trims.append(time.monotonic()))
    trimmer = heap.PhaseTrimmer(settle_s=5.0)
    with trimmer.phase():
        pass  # the train phase: its idle trim is 5 s away
    trimmer.trim_now()
    with trimmer.phase():
        wait_for(lambda: trimmer.trims == 1)  # inside the broadcast call
        assert len(trims) == 1
    time.sleep(0.2)
    assert len(trims) == 1  # the idle trim stays owed, 5 s out
