"""bench trl's memory sampler: PSS counts a page shared by two processes once, RSS twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from bench.trl import PeakMemory, read_smaps_rollup, read_statm_rss

MIB = 2**20

# a parent writes 64 MiB of shared memory, forks, and both read and hold it for a while
SHARED_TREE = textwrap.dedent("""
    import mmap, os, time
    m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_SHARED)
    for _ in range(64):
        m.write(b"x" * (1 << 20))
    pid = os.fork()
    sum(m[i] for i in range(0, len(m), 4096))  # the child maps the pages only when it reads them
    time.sleep(2.0)
    if pid:
        os.waitpid(pid, 0)
""")


def test_pss_counts_shared_pages_once_where_rss_counts_them_per_process():
    proc = subprocess.Popen([sys.executable, "-c", SHARED_TREE])
    memory = PeakMemory(proc.pid, interval_s=0.05, rollup_every_s=0.05)
    assert proc.wait(timeout=30) == 0
    peak = memory.stop()
    assert peak["pss"] >= 64, peak  # the shared region is there once
    assert peak["rss"] - peak["pss"] >= 56, peak  # ... and once more in RSS (the child's)
    pss = memory.by_process_mb("pss")
    assert len(pss) == 1, pss  # parent and child carry one label: python
    assert memory.by_process_mb("uss")["python"] < memory.by_process_mb("rss")["python"]
    assert abs(memory.at_pss_peak_mb()["python"] - peak["pss"]) <= 1  # the one label's share
    assert abs(memory.at_rss_peak_mb()["python"] - peak["rss"]) <= 1  # both processes' RSS
    assert 0 < memory.rss_peak_at_s < 30


def test_smaps_rollup_of_a_gone_process_is_empty():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert read_smaps_rollup(proc.pid) == {}


# 96 MiB private for 1.5 s, then freed, then 0.5 s more
RISE_AND_FALL = textwrap.dedent("""
    import time
    time.sleep(0.3)
    b = bytearray(96 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    time.sleep(1.5)
    del b
    time.sleep(0.5)
""")


def test_rss_peak_is_read_between_the_rollups():
    """RSS comes from statm at every sample: a peak between two smaps_rollup reads (here
    only the first, before the allocation) is still measured."""
    proc = subprocess.Popen([sys.executable, "-c", RISE_AND_FALL])
    memory = PeakMemory(proc.pid, interval_s=0.05, rollup_every_s=60.0)
    assert proc.wait(timeout=30) == 0
    peak = memory.stop()
    assert peak["rss"] >= 96, peak
    assert peak["pss"] < 96, peak  # the one rollup read came before the allocation
    assert memory.by_process_mb("rss")["python"] >= 96
    assert read_statm_rss(proc.pid) is None  # gone
