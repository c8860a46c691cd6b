"""RolloutCollector with test doubles for the rollout and reward clients: sharding over
replicas, version checks, reward aggregation, length penalties and dynamic filtering."""

import pytest
import torch

from quartet.rewards.base import RewardResult
from quartet.types import PromptOutput, SampleOutput, SamplingConfig
from services.coordinator.rollouts import (
    FilterSettings,
    Prompt,
    RewardShaping,
    RolloutCollector,
)


class FakeRollout:
    """Each sample's response is [prompt id, k, ...]; length = 2 + (k % 2)."""

    def __init__(self, version=0, max_new=3):
        self.version = version
        self.calls = []
        self.max_new = max_new

    def generate(self, prompts, sampling, header=None):
        self.calls.append(len(prompts))
        out = []
        for i, p in enumerate(prompts):
            samples = []
            for k in range(sampling.n):
                toks = [p[0], k] + [0] * (k % 2)
                reason = "length" if len(toks) >= self.max_new else "stop"
                samples.append(SampleOutput(toks, reason, [-0.5] * len(toks), f"{p[0]}:{k}"))
            out.append(PromptOutput(i, list(p), samples, self.version))
        return out


class TableReward:
    """Reward looked up by prompt id (from the response text) and sample index."""

    def __init__(self, table):
        self.table = table

    def score(self, inputs, header=None):
        vals = []
        for r in inputs.responses:
            pid, k = (int(x) for x in r.split(":"))
            vals.append(self.table(pid, k))
        return RewardResult(vals, None, {"pid": [float(r.split(":")[0]) for r in
                                                  inputs.responses]})


def _collector(rollouts, rewards, n=2, per_batch=4, shaping=None, filtering=None):
    prompts = [Prompt(f"p{i}", [i, 100], str(i)) for i in range(10)]
    return RolloutCollector(rollouts, rewards, prompts,
                            SamplingConfig(n=n, max_new_tokens=3, logprobs=True), per_batch,
                            shaping or RewardShaping(), filtering or FilterSettings(), seed=0,
                            decode=lambda ids: "")


def test_batch_is_prompt_major_and_sharded_over_replicas():
    a, b = FakeRollout(), FakeRollout()
    col = _collector([a, b], [TableReward(lambda p, k: float(k))])
    r = col.collect(iteration=0, version=0)
    assert a.calls == [2] and b.calls == [2]
    assert len(r) == 8 and r.rewards.tolist() == [0.0, 1.0] * 4
    assert all(row[:2].tolist() == [row[0].item(), 100] for row in r.batch.rows)
    assert r.batch.prompt_lengths == [2] * 8
    assert r.truncated == [False, True] * 4  # 3 tokens with max_new_tokens 3
    assert r.inputs.labels[0] == r.inputs.prompts[0][1:]


def test_stale_replica_is_an_error():
    col = _collector([FakeRollout(version=0)], [TableReward(lambda p, k: 0.0)])
    with pytest.raises(RuntimeError, match="weight sync did not take effect"):
        col.collect(iteration=3, version=2)


def test_weights_aggregate_and_penalties():
    rewards = [TableReward(lambda p, k: 1.0), TableReward(lambda p, k: 2.0)]
    col = _collector([FakeRollout()], rewards, shaping=RewardShaping(weights=[0.5, 2.0]))
    assert col.collect(0, 0).rewards.tolist() == [4.5] * 8
    col = _collector([FakeRollout()], rewards,
                     shaping=RewardShaping(aggregate=lambda s: s.max(dim=0).values))
    r = col.collect(0, 0)
    assert r.rewards.tolist() == [2.0] * 8 and r.extra["reward1"] == 2.0
    # overlong: max 3 tokens, buffer 2 -> expected length 1; 2 tokens -> -0.5, 3 -> -1.0
    col = _collector([FakeRollout()], [TableReward(lambda p, k: 1.0)],
                     shaping=RewardShaping(overlong_buffer_len=2))
    assert col.collect(0, 0).rewards.tolist() == [0.5, 0.0] * 4
    # stop properly: truncated samples' reward scaled by 0.1
    col = _collector([FakeRollout()], [TableReward(lambda p, k: 1.0)],
                     shaping=RewardShaping(stop_properly_penalty_coef=0.1))
    assert torch.allclose(col.collect(0, 0).rewards, torch.tensor([1.0, 0.1] * 4))


def test_dynamic_filtering_drops_uninformative_groups_and_refills():
    # prompts with an even id: both samples right (mean 1) -> dropped; odd: one right -> kept
    rollout = FakeRollout()
    col = _collector([rollout], [TableReward(lambda p, k: 1.0 if p % 2 == 0 else float(k))],
                     filtering=FilterSettings(enabled=True, low=0.0, high=1.0, max_rounds=5))
    r = col.collect(0, 0)
    pids = [int(t) for t in r.inputs.responses[::2] for t in [t.split(":")[0]]]
    assert all(p % 2 == 1 for p in pids) and len(pids) == 4
    assert len(rollout.calls) >= 2 and r.extra["filter/kept_fraction"] < 1
    nothing = _collector([FakeRollout()], [TableReward(lambda p, k: 1.0)],
                         filtering=FilterSettings(enabled=True, max_rounds=2))
    with pytest.raises(RuntimeError, match="kept no prompt group in 2 rounds"):
        nothing.collect(0, 0)
