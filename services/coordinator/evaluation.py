"""Held-out evaluation during `quartet ppo` (`--eval.*`): the reward of greedy samples on the
eval prompts, every `--eval.steps` iterations and after the last one.

It drives the same rollout replicas and reward sources as training, through its own
`RolloutCollector` (greedy, one sample per prompt, no filtering), so the number is the reward
the current policy earns when asked for its best answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from quartet.types import SamplingConfig
from services.coordinator.rollouts import (
    FilterSettings,
    Prompt,
    RewardShaping,
    RewardSource,
    RolloutClient,
    RolloutCollector,
)

__all__ = ["HeldOutEvaluator"]


class HeldOutEvaluator:
    """`evaluate(iteration, version)` → `eval/*` metrics; `due(iteration)` says when."""

    def __init__(self, rollouts: Sequence[RolloutClient], rewards: Sequence[RewardSource],
                 prompts: Sequence[Prompt], sampling: SamplingConfig, shaping: RewardShaping,
                 decode: Callable[[list[int]], str], every: int, num_iterations: int,
                 run_id: str = "ppo") -> None:
        greedy = replace(sampling, n=1, temperature=0.0, top_p=1.0, top_k=-1, logprobs=False)
        self.collector = RolloutCollector(rollouts, rewards, prompts, greedy, len(prompts),
                                          shaping, FilterSettings(enabled=False), seed=0,
                                          decode=decode, run_id=f"{run_id}-eval")
        self.every = every
        self.num_iterations = num_iterations

    def due(self, iteration: int) -> bool:
        """After every `every`-th iteration (1-based) and after the last one."""
        done = iteration + 1
        return done == self.num_iterations or (self.every > 0 and done % self.every == 0)

    def evaluate(self, iteration: int, version: int) -> dict[str, float]:
        # The policy was just synced to `version`; the replicas may not be older than that.
        out = self.collector.collect(iteration, version, max_staleness=0)
        lengths = out.batch.response_lengths()
        metrics = {
            "eval/reward": float(out.rewards.float().mean()),
            "eval/response_length": sum(lengths) / max(len(lengths), 1),
            "eval/truncated_fraction": sum(out.truncated) / max(len(out.truncated), 1),
            "eval/num_prompts": float(len(lengths)),
        }
        metrics.update({f"eval/{k}": v for k, v in out.extra.items()})
        return metrics

    def close(self) -> None:
        self.collector.close()
