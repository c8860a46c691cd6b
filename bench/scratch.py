"""A benchmark's scratch directory and the child it runs, removed however the benchmark ends.

Why: `bench trl` writes several GB there (checkpoints, TRL's output) and removed it only
after a clean finish; stopped by SIGTERM (`timeout`, `kill`) or Ctrl-C, or failing, it left
the directory behind, and a child killed with it half-way could keep writing into it.
`Scratch` turns SIGTERM into an exception in the main thread, so that on any exit it stops
the child it started (SIGTERM twice, then SIGKILL for it and every process below it, by pid)
and removes the directory (unless `keep`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from quartet.testing.faults import alive, descendants, kill

SECOND_SIGNAL_S = 1.0
TERMINATE_GRACE_S = 30.0


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C, exit status 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class Scratch:
    """`with Scratch("quartet-bench-trl-", keep=False) as s:` -> `s.path`, `s.popen(cmd)`."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.prefix = prefix
        self.keep = keep
        self.path = Path()
        self._children: list[subprocess.Popen] = []
        self._previous_handler: Any = None

    def __enter__(self) -> Scratch:
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix))
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    @staticmethod
    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        """`subprocess.Popen(cmd, **kwargs)`, stopped when the scratch closes."""
        proc = subprocess.Popen(cmd, **kwargs)
        self._children.append(proc)
        return proc

    def stop_children(self) -> None:
        """Stops every child still running, and what it started: SIGTERM to the child, a
        second one after `SECOND_SIGNAL_S` (`quartet ppo` then stops at once instead of
        finishing its iteration and saving a checkpoint nobody keeps), then SIGKILL to it
        and its descendants after `TERMINATE_GRACE_S`."""
        for proc in self._children:
            if proc.poll() is not None:
                continue
            below = descendants(proc.pid)
            proc.terminate()
            try:
                proc.wait(SECOND_SIGNAL_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(TERMINATE_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pid in below:
                if alive(pid):
                    kill(pid)
        self._children.clear()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_children()
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
            if not self.keep:
                shutil.rmtree(self.path, ignore_errors=True)
