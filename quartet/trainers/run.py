"""Run a trainer job end to end: process group, logging setup, fit, teardown."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from quartet.config.base import config_to_dict, parse_config
from quartet.config.renamed import RENAMED_FLAGS
from quartet.engines.distributed import init_distributed

__all__ = ["main_for", "run_trainer"]


def run_trainer(trainer_cls: type, job: Any) -> list[dict[str, Any]]:
    """Build ``trainer_cls(job)`` on this rank and fit it; returns rank 0's metric history."""
    import torch.distributed as dist

    world = init_distributed()
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if world.is_main:
        logging.getLogger("quartet").info("config: %s", config_to_dict(job))
    try:
        return trainer_cls(job, world).fit()
    finally:
        if dist.is_initialized():
            dist.barrier()


def main_for(trainer_cls: type, job_cls: type, prog: str,
             argv: Sequence[str] | None = None) -> int:
    """Parse flags for ``job_cls`` and run ``trainer_cls``; the body of each train_* CLI."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job = parse_config(job_cls, argv, prog=prog, renamed=RENAMED_FLAGS)
    run_trainer(trainer_cls, job)
    return 0
