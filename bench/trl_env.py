"""The TRL virtualenv of `python -m bench trl`, built once from pinned versions.

TRL's side runs in its own environment so that its requirements can never move quartet's
(and quartet's services never import TRL). torch comes first from the same local CPU wheel
(`torch==2.13.0`; letting pip choose pulls the multi-GB CUDA build), then the pins in
`requirements/bench-trl.txt` under quartet's constraints. A stamp holding the pins' text
marks a finished build, so a changed pin rebuilds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "requirements" / "bench-trl.txt"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
TORCH = "torch==2.13.0"


def venv_dir() -> Path:
    root = os.environ.get("QUARTET_BENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "quartet-bench") / "trl-venv"


def ensure_trl_venv(log=print) -> Path:
    """The TRL environment's python, building the environment first if needed."""
    target = venv_dir()
    python = target / "bin" / "python"
    stamp = target / ".bench-trl-installed"
    want = PINS.read_text()
    if stamp.is_file() and stamp.read_text() == want and python.is_file():
        return python
    log(f"bench trl: building TRL's virtualenv in {target} (once; a few minutes)")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    base = shutil.which("python3.11") or sys.executable
    steps = [
        [base, "-m", "venv", str(target)],
        [str(python), "-m", "pip", "install", "-q", TORCH],
        [str(python), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), "-r", str(PINS)],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench trl: `{' '.join(cmd)}` failed "
                               f"({done.returncode}):\n{done.stderr[-3000:]}")
    stamp.write_text(want)
    return python
