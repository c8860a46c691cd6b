"""Checkpoint rotation: keep at most ``max_num`` checkpoints and at most ``max_mem`` GB of them.

One function for every writer of rotated checkpoints (the trainers' DeepSpeed checkpoints, the
PPO run's checkpoints), so ``--ckpt.max_num`` and ``--ckpt.max_mem`` mean the same everywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["GB", "checkpoint_dirs", "directory_bytes", "prune_checkpoints", "prune_oldest"]

GB = 1024**3


def directory_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path`` (symlinks not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def checkpoint_dirs(directory: str | Path) -> list[Path]:
    """The checkpoint folders directly under ``directory``, oldest first (by mtime)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def prune_checkpoints(directory: str | Path, max_num: int | None = None,
                      max_mem_gb: float | None = None) -> list[Path]:
    """`prune_oldest` over the checkpoint folders directly under ``directory`` (by mtime)."""
    return prune_oldest(checkpoint_dirs(directory), max_num, max_mem_gb)


def prune_oldest(dirs: list[Path], max_num: int | None = None,
                 max_mem_gb: float | None = None) -> list[Path]:
    """Delete the oldest of ``dirs`` (given oldest first) until at most ``max_num`` are left
    and together they take at most ``max_mem_gb`` GB (1 GB = 2**30 bytes). The newest
    checkpoint is always kept, even when it alone is larger than ``max_mem_gb``. Returns the
    deleted folders, oldest first. ``None`` disables a limit."""
    dirs = list(dirs)
    sizes = [directory_bytes(d) for d in dirs] if max_mem_gb is not None else [0] * len(dirs)
    total = sum(sizes)
    deleted: list[Path] = []
    while len(dirs) > 1:
        too_many = max_num is not None and len(dirs) > max_num
        too_big = max_mem_gb is not None and total > max_mem_gb * GB
        if not (too_many or too_big):
            break
        oldest, size = dirs.pop(0), sizes.pop(0)
        shutil.rmtree(oldest, ignore_errors=True)
        total -= size
        deleted.append(oldest)
    return deleted
