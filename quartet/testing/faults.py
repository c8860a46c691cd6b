"""Fault injection on real processes, shared by the fault tests and `python -m bench faults`:
find a run's role processes, kill them, and compare a run's metrics with a fault-free one's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

# Keys that measure the machine, not the run, or that name a replica by its address:
# excluded when runs are compared.
VOLATILE_PREFIXES = ("time/", "sync/", "rollout/")
VOLATILE_SUFFIXES = ("seconds", "_per_s")


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of `pid` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[1] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            parents[int(entry)] = stat[0]
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        frontier += kids
    return [p for p in found if alive(p)]


def role_pid(root_pid: int, service: str) -> int:
    """The pid of the `quartet serve` process named `service` (e.g. "actor", "rollout0")
    started under `root_pid` (found by its port file `<service>.port`)."""
    for pid in descendants(root_pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and any(a.endswith(f"/{service}.port".encode()) for a in args):
            return pid
    raise LookupError(f"no {service} service process under pid {root_pid}")


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def read_metrics(out: Path) -> list[dict[str, float]]:
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparable(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items()
            if not k.startswith(VOLATILE_PREFIXES) and not k.endswith(VOLATILE_SUFFIXES)}


def row_differences(a: dict[str, float], b: dict[str, float], rel_tol: float = 1e-4,
                    abs_tol: float = 1e-6) -> list[str]:
    """Keys where two metric rows differ beyond float tolerance (volatile keys ignored)."""
    a, b = comparable(a), comparable(b)
    diffs = [f"{k}: only in one run" for k in sorted(set(a) ^ set(b))]
    diffs += [f"{k}: {a[k]!r} != {b[k]!r}" for k in sorted(set(a) & set(b))
              if not math.isclose(a[k], b[k], rel_tol=rel_tol, abs_tol=abs_tol)]
    return diffs


def runs_differences(a: list[dict[str, float]], b: list[dict[str, float]],
                     rel_tol: float = 1e-4) -> list[str]:
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)} rows"]
    return [f"row {i + 1} {d}" for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in row_differences(x, y, rel_tol)]
