"""Deterministic, resumable, rank-sharded micro-batch order.

Why not a DataLoader + DistributedSampler: exact resume needs "skip the first k micro-batches of
epoch e" to reproduce the same order, and a pure function of (seed, epoch, rank) makes that
trivial and testable.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["MicroBatchPlan"]


class MicroBatchPlan:
    """Micro-batches of sample indices for one rank.

    Each epoch shuffles all indices with ``seed + epoch``, drops the tail that does not fill a
    whole optimizer step (``global_batch`` samples), and deals contiguous micro-batches to ranks
    so that step ``s`` on every rank covers the same global batch.
    """

    def __init__(self, num_samples: int, global_batch: int, micro_batch: int, rank: int,
                 world_size: int, seed: int) -> None:
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"--train.batch_size {global_batch} must be a multiple of "
                f"--train.micro_batch_size {micro_batch} x world size {world_size}"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.accum_steps = global_batch // (micro_batch * world_size)
        self.steps_per_epoch = num_samples // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset has {num_samples} samples, fewer than one global batch "
                             f"(--train.batch_size {global_batch})")

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum_steps

    def epoch(self, epoch: int, skip_micro_batches: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches of ``epoch``, after skipping the first ``skip``."""
        order = list(range(self.num_samples))
        random.Random(self.seed + epoch).shuffle(order)
        for step in range(self.steps_per_epoch):
            batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            per_rank = len(batch) // self.world_size
            mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            for k in range(self.accum_steps):
                index = step * self.accum_steps + k
                if index < skip_micro_batches:
                    continue
                yield mine[k * self.micro_batch:(k + 1) * self.micro_batch]
