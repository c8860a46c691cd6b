"""Reward sources in one callable: every source quartet supports, summed with weights.

The same sources as ``quartet ppo``'s ``--reward.*``: reward models (run here), rule files,
running reward services (gRPC) and OpenRLHF-style HTTP servers, plus process reward models
(per-step scores; the first source that returns them provides ``step_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quartet.config.inference import RewardSourceConfig
from quartet.rewards.base import RewardInputs, RewardResult

__all__ = ["RewardSources", "ScoredBatch"]


@dataclass
class ScoredBatch:
    """Weighted-sum rewards, each source's own rewards, and per-step scores when a source
    returns them (a process reward model)."""

    rewards: list[float]
    by_source: dict[str, list[float]] = field(default_factory=dict)
    step_scores: list[list[float]] | None = None


class RewardSources:
    """``--reward.*`` built once; call with prompts, responses and labels."""

    def __init__(self, cfg: RewardSourceConfig) -> None:
        from quartet.clients.reward import GrpcRewardClient
        from quartet.rewards.http import RemoteHTTPReward
        from quartet.rewards.model import SequenceRegressionReward
        from quartet.rewards.prm import ProcessReward
        from quartet.rewards.rule import RuleReward

        self.sources: list = []
        self.sources += [SequenceRegressionReward(p, micro_batch_size=cfg.micro_batch_size)
                         for p in cfg.model_name_or_path]
        self.sources += [ProcessReward(p, micro_batch_size=cfg.micro_batch_size)
                         for p in cfg.prm_model_name_or_path]
        self.sources += [RuleReward(p) for p in cfg.func]
        self.sources += [GrpcRewardClient(a) for a in cfg.address]
        self.sources += [RemoteHTTPReward(u) for u in cfg.remote_url]
        self.weights = list(cfg.weights) or [1.0] * len(self.sources)

    def __call__(self, prompts: list[str], responses: list[str],
                 labels: list[str]) -> ScoredBatch:
        inputs = RewardInputs(queries=[p + r for p, r in zip(prompts, responses, strict=True)],
                              prompts=prompts, responses=responses,
                              labels=labels or [""] * len(prompts))
        total = [0.0] * len(prompts)
        out = ScoredBatch(total)
        for source, weight in zip(self.sources, self.weights, strict=True):
            result: RewardResult = source(inputs)
            out.by_source[source.name] = result.rewards
            for i, r in enumerate(result.rewards):
                total[i] += weight * r
            if result.step_scores is not None and out.step_scores is None:
                out.step_scores = result.step_scores
        return out

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if callable(close):
                close()
