"""`bench weight_plane` runs both planes end to end and leaves nothing in /dev/shm (its
figures are read in docs/benchmarks.md, not asserted here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from quartet.weightsync import shm

REPO = Path(__file__).resolve().parents[2]


def test_weight_plane_reports_both_planes_and_leaves_no_segment():
    before = shm.segment_names()
    out = subprocess.run([sys.executable, "-m", "bench", "weight_plane", "--sessions", "2",
                          "--warmup", "0", "--hidden-size", "64", "--layers", "1"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "weight_plane" and result["sessions"] == 2
    assert result["broadcast"]["median_ms"] > 0 and result["shared_memory"]["median_ms"] > 0
    assert not shm.segments_left(before)
