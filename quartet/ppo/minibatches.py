"""Which rows form each PPO mini-batch: a shuffled order per epoch, whole prompt groups kept
together when the rows come in groups.

Rollouts hold the n samples of a prompt as consecutive rows (GRPO / RLOO / any
`n_samples_per_prompt > 1`). Shuffling rows scatters a group over the mini-batches and
their micro-batches; shuffling whole groups keeps each group in one mini-batch, and, when
the micro-batch size is a multiple of n, in one micro-batch, where the roles compute the
group's shared prompt once (:mod:`quartet.data.shared_prefix`). With one mini-batch per
epoch the rows of a step, hence its gradient, are the same either way; with several, the
mini-batches are drawn from whole groups instead of single rows.
"""

from __future__ import annotations

import random

__all__ = ["epoch_order"]


def epoch_order(n_rows: int, group_size: int, mini_batch_size: int,
                rng: random.Random) -> list[int]:
    """A shuffled order of `range(n_rows)`; consecutive runs of `group_size` rows stay
    together, in their order, when groups tile both the rows and the mini-batches."""
    if group_size > 1 and n_rows % group_size == 0 and mini_batch_size % group_size == 0:
        groups = list(range(n_rows // group_size))
        rng.shuffle(groups)
        return [g * group_size + j for g in groups for j in range(group_size)]
    order = list(range(n_rows))
    rng.shuffle(order)
    return order
