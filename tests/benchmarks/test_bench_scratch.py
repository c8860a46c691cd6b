"""`bench trl`'s scratch directory goes away, with the run in progress and what that run
started, when the benchmark is stopped by SIGTERM or Ctrl-C (SIGINT), not only at a clean
finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quartet.testing.faults import alive, wait_for

REPO = Path(__file__).resolve().parents[2]
# A benchmark in miniature: a scratch directory with a file in it, and a child that starts
# a grandchild and then waits (as `quartet ppo` starts its role services). It first takes
# Ctrl-C as a terminal gives it: started from a shell's background job (`make test &`)
# the test run, and so this process, would inherit SIGINT ignored and never see it.
BENCH = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from bench.scratch import Scratch
with Scratch("quartet-test-scratch-") as scratch:
    (scratch.path / "big.bin").write_bytes(b"x" * 1024)
    child = scratch.popen([sys.executable, "-c",
        "import subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(g.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    print(scratch.path, child.pid, grandchild, flush=True)
    child.wait()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_removes_its_scratch_and_stops_its_children(sig):
    bench = subprocess.Popen([sys.executable, "-c", BENCH], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        work, child, grandchild = bench.stdout.readline().split()
        assert Path(work, "big.bin").is_file()
        bench.send_signal(sig)
        # SIGTERM: exit status 143; Ctrl-C: Python dies of SIGINT after unwinding
        assert bench.wait(60) == (143 if sig == signal.SIGTERM else -signal.SIGINT)
        assert not Path(work).exists()
        wait_for(lambda: not alive(int(child)) and not alive(int(grandchild)), 10,
                 "the child and grandchild to be gone")
    finally:
        bench.kill()
        bench.wait()


def test_keep_keeps_the_scratch_directory(tmp_path):
    from bench.scratch import Scratch

    with Scratch(str(tmp_path / "kept-"), keep=True) as scratch:
        (scratch.path / "result.json").write_text("{}")
    assert (scratch.path / "result.json").is_file()
