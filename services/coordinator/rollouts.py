"""Collecting one iteration's samples: generation over the replicas, rewards, penalties and
dynamic filtering. The PPO loop calls `RolloutCollector.collect`, in the foreground or (async
mode) in the background while the previous batch trains."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import torch

from quartet.algos.rewards import combine_rewards, overlong_penalty, stop_properly_penalty
from quartet.codec.batches import RowBatch
from quartet.rewards.base import RewardInputs, RewardResult
from quartet.sharding import contiguous
from quartet.telemetry import ContextThreadPoolExecutor
from quartet.types import PromptOutput, SamplingConfig
from quartet.v1 import common_pb2

log = logging.getLogger("quartet.coordinator")
T = TypeVar("T")


class RolloutClient(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 header: common_pb2.RequestHeader | None = None) -> list[PromptOutput]: ...


class RewardSource(Protocol):
    def score(self, inputs: RewardInputs,
              header: common_pb2.RequestHeader | None = None) -> RewardResult: ...


@dataclass
class Prompt:
    text: str
    tokens: list[int]
    label: str = ""


@dataclass
class RewardShaping:
    """How several reward sources become one scalar per sample, plus length penalties."""

    weights: Sequence[float] = ()
    aggregate: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Custom aggregation of the [K, B] source scores into [B] (default: weighted sum)."""
    overlong_buffer_len: int = 0
    overlong_penalty_factor: float = 1.0
    stop_properly_penalty_coef: float | None = None


@dataclass
class FilterSettings:
    """Dynamic filtering: keep prompt groups whose mean score lies strictly inside `low,high`
    (DAPO: groups that are all right or all wrong carry no signal for group baselines)."""

    enabled: bool = False
    low: float = 0.0
    high: float = 1.0
    max_rounds: int = 4


@dataclass
class Rollouts:
    """One iteration's samples, scored by the reward sources (prompt-major, n per prompt)."""

    batch: RowBatch
    inputs: RewardInputs
    rewards: torch.Tensor
    rollout_logprobs: list[torch.Tensor]
    truncated: list[bool]
    weight_version: int
    """Weights that generated the samples (the lowest, if replicas disagreed)."""
    extra: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batch)

    def groups(self, n: int) -> int:
        return len(self) // n

    def take_groups(self, index: list[int], n: int) -> Rollouts:
        rows = [g * n + j for g in index for j in range(n)]

        def pick(xs):
            return [xs[i] for i in rows]

        inp = self.inputs
        return Rollouts(
            RowBatch(pick(self.batch.rows), pick(self.batch.prompt_lengths)),
            RewardInputs(pick(inp.queries), pick(inp.prompts), pick(inp.responses),
                         pick(inp.labels), None),
            self.rewards[rows], pick(self.rollout_logprobs), pick(self.truncated),
            self.weight_version, dict(self.extra))

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        def cat(get):
            return [x for p in parts for x in get(p)]

        return Rollouts(
            RowBatch(cat(lambda p: p.batch.rows), cat(lambda p: p.batch.prompt_lengths)),
            RewardInputs(cat(lambda p: p.inputs.queries), cat(lambda p: p.inputs.prompts),
                         cat(lambda p: p.inputs.responses), cat(lambda p: p.inputs.labels)),
            torch.cat([p.rewards for p in parts]), cat(lambda p: p.rollout_logprobs),
            cat(lambda p: p.truncated), min(p.weight_version for p in parts),
            dict(parts[-1].extra))


def timed(fn: Callable[..., T], *args) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


class RolloutCollector:
    def __init__(self, rollouts: Sequence[RolloutClient], rewards: Sequence[RewardSource],
                 prompts: Sequence[Prompt], sampling: SamplingConfig, prompts_per_batch: int,
                 shaping: RewardShaping, filtering: FilterSettings, seed: int,
                 decode: Callable[[list[int]], str], run_id: str = "ppo") -> None:
        if not prompts:
            raise ValueError("data: no prompts to train on")
        self.replicas = list(rollouts)
        self.rewards = list(rewards)
        self.prompts = list(prompts)
        self.sampling = sampling
        self.prompts_per_batch = prompts_per_batch
        self.shaping = shaping
        self.filtering = filtering
        self.decode = decode
        self.run_id = run_id
        self.seed = seed
        self.rng = random.Random(seed)
        self._order: list[int] = []
        self.pool = ContextThreadPoolExecutor(max_workers=4 + len(self.replicas),
                                       thread_name_prefix="rollout")

    def header(self, iteration: int, version: int, what: str) -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(run_id=self.run_id, iteration=iteration,
                                        policy_version=version,
                                        request_id=f"{self.run_id}/{iteration}/{what}")

    # ---------------------------------------------------------------- resumable state
    def state(self) -> dict[str, Any]:
        """Data order and position: what a checkpoint needs to take the same next prompts."""
        return {"rng": self.rng.getstate(), "order": list(self._order)}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self._order = list(state["order"])

    def sampling_seed(self, iteration: int, round_index: int) -> int:
        """Seed of one generation round: a function of the run's seed and the round only, so
        a resumed or replayed iteration samples exactly what the first attempt sampled (a
        restarted replica's own RNG plays no part)."""
        return random.Random(f"{self.seed}/{iteration}/{round_index}").getrandbits(40)

    def next_prompts(self, count: int) -> list[Prompt]:
        out = []
        while len(out) < count:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            out.append(self.prompts[self._order.pop()])
        return out

    # ---------------------------------------------------------------- generation
    def generate(self, prompts: list[Prompt], iteration: int, version: int,
                 max_staleness: int, round_index: int = 0
                 ) -> tuple[list[PromptOutput], dict[str, float]]:
        """Contiguous shards over the replicas; each returns n samples per prompt. Prompt i's
        samples are seeded `seed + i * n + k` whichever replica serves them. A sample made by
        weights older than `version - max_staleness` is an error (sync did not take).
        Also returns per-replica counters (`rollout/<replica>/prompts|samples|seconds`)."""
        replicas = list(self.replicas)
        shards = contiguous(len(prompts), len(replicas))
        work = [(k, r, s) for k, (r, s) in enumerate(zip(replicas, shards, strict=True)) if s]
        seed = self.sampling_seed(iteration, round_index)
        futures = [self.pool.submit(timed, r.generate, [prompts[i].tokens for i in s],
                                    replace(self.sampling, seed=seed + s[0] * self.sampling.n),
                                    self.header(iteration, version, f"generate{k}"))
                   for k, r, s in work]
        outputs: list[PromptOutput | None] = [None] * len(prompts)
        counters: dict[str, float] = {}
        for fut, (k, replica, shard) in zip(futures, work, strict=True):
            result, seconds = fut.result()
            name = f"rollout/{getattr(replica, 'name', f'replica{k}')}"
            counters[f"{name}/prompts"] = float(len(shard))
            counters[f"{name}/samples"] = float(sum(len(o.samples) for o in result))
            counters[f"{name}/seconds"] = seconds
            for out in result:
                if not version - max_staleness <= out.weight_version <= version + 1:
                    raise RuntimeError(
                        f"rollout served weight version {out.weight_version}, but the actor "
                        f"is at version {version}: weight sync did not take effect")
                outputs[shard[out.prompt_index]] = out
        missing = [i for i, o in enumerate(outputs) if o is None]
        if missing:
            raise RuntimeError(f"rollout returned no samples for prompts {missing[:5]}")
        return outputs, counters  # type: ignore[return-value]

    # ---------------------------------------------------------------- rewards
    def score(self, inputs: RewardInputs, truncated: list[bool], lengths: list[int],
              iteration: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        futures = [self.pool.submit(r.score, inputs, self.header(iteration, version,
                                                                 f"reward{k}"))
                   for k, r in enumerate(self.rewards)]
        results = [f.result() for f in futures]
        scores = torch.stack([torch.tensor(r.rewards, dtype=torch.float32) for r in results])
        extra: dict[str, float] = {}
        for k, res in enumerate(results):
            if len(results) > 1:
                extra[f"reward{k}"] = float(scores[k].mean())
            for name, values in res.extra_logs.items():
                extra[f"reward{k}/{name}"] = float(sum(values) / max(len(values), 1))
        s = self.shaping
        if s.aggregate is not None:
            combined = torch.as_tensor(s.aggregate(scores), dtype=torch.float32).reshape(-1)
            if combined.numel() != scores.shape[1]:
                raise ValueError(f"--reward.aggregate_func returned {combined.numel()} rewards "
                                 f"for {scores.shape[1]} samples")
        else:
            combined = combine_rewards(scores, list(s.weights) or None)
        if s.overlong_buffer_len > 0:
            penalty = overlong_penalty(torch.tensor(lengths), self.sampling.max_new_tokens,
                                       s.overlong_buffer_len, s.overlong_penalty_factor)
            combined = combined + penalty.float()
            extra["overlong_penalty"] = float(penalty.float().mean())
        if s.stop_properly_penalty_coef is not None:
            combined = stop_properly_penalty(combined, torch.tensor(truncated),
                                             s.stop_properly_penalty_coef)
        return combined, extra

    # ---------------------------------------------------------------- one batch
    def _round(self, prompts: list[Prompt], iteration: int, version: int,
               max_staleness: int, round_index: int = 0) -> Rollouts:
        outputs, counters = self.generate(prompts, iteration, version, max_staleness,
                                          round_index)
        rows, plens, texts_in, texts_out, labels, rollout_lp, truncated = ([] for _ in range(7))
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in out.samples:
                tokens = list(sample.token_ids or [])
                rows.append(torch.tensor(list(out.prompt_tokens) + tokens))
                plens.append(len(out.prompt_tokens))
                texts_in.append(prompt.text)
                texts_out.append(sample.text if sample.text is not None else self.decode(tokens))
                labels.append(prompt.label)
                rollout_lp.append(torch.tensor(sample.logprobs or [0.0] * len(tokens)))
                truncated.append(sample.finish_reason == "length")
        batch = RowBatch(rows, plens)
        inputs = RewardInputs([a + b for a, b in zip(texts_in, texts_out, strict=True)],
                              texts_in, texts_out, labels, batch)
        rewards, extra = self.score(inputs, truncated, batch.response_lengths(), iteration,
                                    version)
        return Rollouts(batch, inputs, rewards, rollout_lp, truncated,
                        min(o.weight_version for o in outputs), {**extra, **counters})

    def collect(self, iteration: int, version: int, max_staleness: int = 0) -> Rollouts:
        """`prompts_per_batch` prompts' samples; with filtering, groups outside the score
        range are dropped and refilled with new prompts for up to `max_rounds` rounds."""
        n = self.sampling.n
        if not self.filtering.enabled:
            return self._round(self.next_prompts(self.prompts_per_batch), iteration, version,
                               max_staleness)
        kept: list[Rollouts] = []
        have = seen = 0
        for round_index in range(self.filtering.max_rounds):
            part = self._round(self.next_prompts(self.prompts_per_batch - have), iteration,
                               version, max_staleness, round_index)
            means = part.rewards.reshape(-1, n).mean(dim=1)
            good = [g for g, m in enumerate(means.tolist())
                    if self.filtering.low < m < self.filtering.high]
            seen += part.groups(n)
            if good:
                kept.append(part.take_groups(good, n))
                have += len(good)
            if have >= self.prompts_per_batch:
                break
        if not kept:
            raise RuntimeError(
                f"dynamic filtering kept no prompt group in {self.filtering.max_rounds} rounds "
                f"(every group's mean score outside ({self.filtering.low}, "
                f"{self.filtering.high})); widen --algo.dynamic_filtering_reward_range")
        result = Rollouts.concat(kept)
        result.extra["filter/kept_fraction"] = have / max(seen, 1)
        result.extra["filter/groups"] = float(have)
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
