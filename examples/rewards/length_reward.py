"""An OpenRLHF-style rule reward: prefers responses near 8 words. Used by tests and docs."""

import torch


def reward_func(queries, prompts, labels, responses=None):
    responses = responses or [q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    rewards = torch.tensor([-abs(len(r.split()) - 8) / 8.0 for r in responses])
    return {"rewards": rewards, "scores": rewards,
            "extra_logs": {"words": torch.tensor([float(len(r.split())) for r in responses])}}
