"""Which forward passes an iteration can skip because another pass already computes them.

PPO's "old" log-probs are the policy's log-probs on the weights that scored the rollout.
With one epoch and one mini-batch per iteration, the single TrainStep's forward runs on
exactly those weights, over exactly those rows, so its log-probs (detached) *are* the old
log-probs: the separate scoring pass is redundant. Every other schedule updates the weights
before some mini-batch trains, and needs them computed up front.
"""

from __future__ import annotations


def old_logprobs_from_forward(ppo_epochs: int, rows: int, mini_batch_size: int,
                              reward_kl_coef: float, adaptive_kl: bool) -> bool:
    """Whether the actor's scoring pass can be skipped for this iteration.

    Also required: no KL penalty in the reward (it is computed from the old log-probs before
    the advantages) and no adaptive KL controller (it steers on the measured KL).
    """
    return (ppo_epochs == 1 and rows == mini_batch_size and reward_kl_coef == 0
            and not adaptive_kl)
