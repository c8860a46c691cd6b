"""The PPO loop: generation → scoring → advantages → updates → weight sync → checkpoint.

This is the one file that says what an RLHF iteration is. It talks to the roles through
small client interfaces (`PPORoles`), so the same loop drives gRPC services (embedded or
cluster mode) and in-process engines (the overhead benchmark's baseline).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from quartet.algos.kl import AdaptiveKLController, FixedKLController
from quartet.algos.rewards import RunningMeanStd
from quartet.codec.batches import TokenBatch
from quartet.engines.generation.base import PromptOutput
from quartet.engines.generation.sampling import SamplingConfig
from quartet.ppo.batch import PolicyLossSettings, ValueLossSettings
from quartet.ppo.experience import (
    AdvantageSettings,
    Experience,
    experience_stats,
    make_experience,
)
from quartet.rewards.base import RewardInputs, RewardResult
from quartet.v1 import common_pb2

log = logging.getLogger("quartet.coordinator")

PHASES = ("generate", "score", "advantage", "train", "sync", "checkpoint")


# --------------------------------------------------------------------------- role interfaces
class ActorClient(Protocol):
    def logprobs(self, batch: TokenBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: PolicyLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...
    def save(self, output_dir: str, hf_export: bool = True, tag: str = "") -> Any: ...


class CriticClient(Protocol):
    def values(self, batch: TokenBatch,
               header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: ValueLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...


class ReferenceClient(Protocol):
    def logprobs(self, batch: TokenBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...


class RolloutClient(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 header: common_pb2.RequestHeader | None = None) -> list[PromptOutput]: ...


class RewardSource(Protocol):
    def score(self, inputs: RewardInputs,
              header: common_pb2.RequestHeader | None = None) -> RewardResult: ...


@dataclass
class PPORoles:
    actor: ActorClient
    rollouts: Sequence[RolloutClient]
    rewards: Sequence[RewardSource]
    reward_weights: Sequence[float]
    reference: ReferenceClient | None = None
    critic: CriticClient | None = None
    sync_weights: Callable[[int], dict[str, float]] | None = None
    """Pushes the actor's weights to every rollout replica as `version`; returns stats."""


# --------------------------------------------------------------------------- settings
@dataclass
class PPOLoopSettings:
    """Everything the loop decides; resolved from `quartet ppo` flags once, then frozen."""

    num_iterations: int = 10
    prompts_per_iteration: int = 8
    n_samples_per_prompt: int = 1
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32))
    mini_batch_size: int = 8
    ppo_epochs: int = 1
    advantage: AdvantageSettings = field(default_factory=AdvantageSettings)
    policy_loss: PolicyLossSettings = field(default_factory=PolicyLossSettings)
    value_loss: ValueLossSettings = field(default_factory=ValueLossSettings)
    init_kl_coef: float = 0.01
    kl_in_loss: bool = False
    kl_target: float | None = None
    kl_horizon: int = 10000
    normalize_reward: bool = False
    freeze_actor_steps: int = 0
    """Iterations at the start that train only the critic (value warm-up)."""
    save_steps: int = -1
    """Save a checkpoint every this many iterations; -1 only at the end."""
    output_dir: str = "runs/ppo"
    seed: int = 42
    run_id: str = "ppo"


@dataclass
class Prompt:
    text: str
    tokens: list[int]
    label: str = ""


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------- the loop
class PPOLoop:
    def __init__(
        self,
        roles: PPORoles,
        settings: PPOLoopSettings,
        prompts: Sequence[Prompt],
        decode: Callable[[list[int]], str],
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("data: no prompts to train on")
        self.roles = roles
        self.s = settings
        self.prompts = list(prompts)
        self.decode = decode
        self.on_event = on_event or (lambda event: None)
        self.version = 0
        self.rng = random.Random(settings.seed)
        self._order: list[int] = []
        self.kl_ctl = (
            AdaptiveKLController(settings.init_kl_coef, settings.kl_target, settings.kl_horizon)
            if settings.kl_target else FixedKLController(settings.init_kl_coef)
        )
        self.reward_stats = RunningMeanStd()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ppo")
        self.out = Path(settings.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "metrics.jsonl"
        self.history: list[dict[str, float]] = []
        if settings.advantage.estimator == "gae" and roles.critic is None:
            raise ValueError("algo.advantage.estimator gae needs a critic")
        rows = settings.prompts_per_iteration * settings.n_samples_per_prompt
        if rows % settings.mini_batch_size:
            raise ValueError(
                f"train.batch_size {settings.mini_batch_size} must divide rollout.batch_size x "
                f"rollout.n_samples_per_prompt = {rows}")

    # ---------------------------------------------------------------- helpers
    def header(self, iteration: int, what: str) -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(run_id=self.s.run_id, iteration=iteration,
                                        policy_version=self.version,
                                        request_id=f"{self.s.run_id}/{iteration}/{what}")

    def next_prompts(self) -> list[Prompt]:
        out = []
        while len(out) < self.s.prompts_per_iteration:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            out.append(self.prompts[self._order.pop()])
        return out

    # ---------------------------------------------------------------- phases
    def generate(self, prompts: list[Prompt], iteration: int) -> list[PromptOutput]:
        """Split prompts across rollout replicas; each returns n samples per prompt."""
        sampling = self.s.sampling
        replicas = list(self.roles.rollouts)
        shards = [list(range(i, len(prompts), len(replicas))) for i in range(len(replicas))]
        futures = [
            self.pool.submit(r.generate, [prompts[i].tokens for i in shard], sampling,
                             self.header(iteration, f"generate{k}"))
            for k, (r, shard) in enumerate(zip(replicas, shards, strict=True)) if shard
        ]
        outputs: list[PromptOutput | None] = [None] * len(prompts)
        for fut, shard in zip(futures, [s for s in shards if s], strict=True):
            for out in fut.result():
                if out.weight_version != self.version:
                    raise RuntimeError(
                        f"rollout served weight version {out.weight_version}, but the actor "
                        f"is at version {self.version}: weight sync did not take effect")
                outputs[shard[out.prompt_index]] = out
        missing = [i for i, o in enumerate(outputs) if o is None]
        if missing:
            raise RuntimeError(f"rollout returned no samples for prompts {missing[:5]}")
        return outputs  # type: ignore[return-value]

    def score(self, batch: TokenBatch, inputs: RewardInputs, iteration: int):
        """Reference log-probs, actor log-probs, critic values and rewards, in parallel."""
        temp = self.s.policy_loss.temperature
        actor = self.pool.submit(self.roles.actor.logprobs, batch, temp,
                                 self.header(iteration, "actor_logprobs"))
        ref = (self.pool.submit(self.roles.reference.logprobs, batch, temp,
                                self.header(iteration, "ref_logprobs"))
               if self.roles.reference is not None else None)
        critic = (self.pool.submit(self.roles.critic.values, batch,
                                   self.header(iteration, "values"))
                  if self.roles.critic is not None else None)
        rewards = [self.pool.submit(r.score, inputs, self.header(iteration, f"reward{k}"))
                   for k, r in enumerate(self.roles.rewards)]
        results = [f.result() for f in rewards]
        combined = torch.zeros(len(batch))
        extra: dict[str, float] = {}
        for k, (res, w) in enumerate(zip(results, self.roles.reward_weights, strict=True)):
            combined += w * torch.tensor(res.rewards, dtype=torch.float32)
            for name, values in res.extra_logs.items():
                extra[f"reward{k}/{name}"] = float(sum(values) / max(len(values), 1))
        return (actor.result(), ref.result() if ref else None,
                critic.result() if critic else None, combined, extra)

    def train(self, exp: Experience, iteration: int) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches; actor and critic step in parallel."""
        n = len(exp)
        size = self.s.mini_batch_size
        sums: dict[str, float] = {}
        steps = 0
        train_actor = iteration >= self.s.freeze_actor_steps
        loss = self.s.policy_loss
        if self.s.kl_in_loss:
            loss = PolicyLossSettings(**{**asdict(loss), "kl_coef": self.kl_ctl.value})
        for _epoch in range(self.s.ppo_epochs):
            order = list(range(n))
            self.rng.shuffle(order)
            for start in range(0, n - size + 1, size):
                index = order[start : start + size]
                futures = {}
                if train_actor:
                    futures["actor"] = self.pool.submit(
                        self.roles.actor.train_step, exp.policy_minibatch(index), loss,
                        self.header(iteration, f"actor_train{steps}"))
                if self.roles.critic is not None:
                    futures["critic"] = self.pool.submit(
                        self.roles.critic.train_step, exp.value_minibatch(index),
                        self.s.value_loss, self.header(iteration, f"critic_train{steps}"))
                for role, fut in futures.items():
                    for k, v in fut.result().items():
                        sums[f"{role}/{k}"] = sums.get(f"{role}/{k}", 0.0) + v
                steps += 1
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        if "actor/policy_version" in out:
            out["actor/policy_version"] = sums["actor/policy_version"] / steps
        out["train_steps"] = float(steps)
        return out

    def sync(self) -> dict[str, float]:
        self.version += 1
        if self.roles.sync_weights is None:
            return {}
        return self.roles.sync_weights(self.version)

    # ---------------------------------------------------------------- one iteration
    def iteration(self, it: int) -> dict[str, float]:
        timer = PhaseTimer()
        prompts = self.next_prompts()
        self.on_event({"iteration": it, "phase": "generate"})
        with timer("generate"):
            outputs = self.generate(prompts, it)
        rows, plens, texts_in, texts_out, labels, rollout_lp = [], [], [], [], [], []
        truncated = []
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in out.samples:
                tokens = sample.token_ids or []
                rows.append(torch.tensor(list(out.prompt_tokens) + list(tokens)))
                plens.append(len(out.prompt_tokens))
                texts_in.append(prompt.text)
                texts_out.append(sample.text if sample.text is not None
                                 else self.decode(tokens))
                labels.append(prompt.label)
                rollout_lp.append(torch.tensor(sample.logprobs or [0.0] * len(tokens)))
                truncated.append(sample.finish_reason == "length")
        batch = TokenBatch(rows, plens)
        inputs = RewardInputs([a + b for a, b in zip(texts_in, texts_out, strict=True)],
                              texts_in, texts_out, labels, batch)
        self.on_event({"iteration": it, "phase": "score"})
        with timer("score"):
            old_lp, ref_lp, values, rewards, extra = self.score(batch, inputs, it)
        raw_reward = float(rewards.mean())
        self.on_event({"iteration": it, "phase": "advantage"})
        with timer("advantage"):
            if self.s.normalize_reward:
                self.reward_stats.update(rewards)
                rewards = self.reward_stats.normalize(rewards)
            settings = AdvantageSettings(**{
                **asdict(self.s.advantage),
                "kl_coef": 0.0 if self.s.kl_in_loss else self.kl_ctl.value,
                "n_samples_per_prompt": self.s.n_samples_per_prompt,
            })
            # Empty responses stay in the batch (fully masked rows reduce to 0 in every
            # loss), so each TrainStep gets exactly mini_batch_size rows.
            exp = make_experience(batch, old_lp, ref_lp, values, rewards, settings,
                                  rollout_logprobs=rollout_lp)
        self.on_event({"iteration": it, "phase": "train"})
        with timer("train"):
            train_metrics = self.train(exp, it)
        self.on_event({"iteration": it, "phase": "sync"})
        with timer("sync"):
            sync_metrics = self.sync()
        stats = experience_stats(exp)
        self.kl_ctl.update(stats["kl"], len(exp))
        if self.s.save_steps > 0 and (it + 1) % self.s.save_steps == 0:
            with timer("checkpoint"):
                self.save(f"iter{it + 1}")
        metrics: dict[str, float] = {
            "iteration": float(it + 1),
            **stats,
            "reward_raw": raw_reward,
            "truncated_fraction": sum(truncated) / max(len(truncated), 1),
            "kl_coef": float(self.kl_ctl.value),
            "policy_version": float(self.version),
            "rollout_weight_version": float(outputs[0].weight_version),
            **train_metrics,
            **{f"sync/{k}": v for k, v in sync_metrics.items()},
            **extra,
            **{f"time/{k}": v for k, v in timer.seconds.items()},
        }
        return metrics

    def save(self, tag: str) -> None:
        path = str((self.out / "checkpoints").resolve())
        self.roles.actor.save(path, hf_export=True, tag=tag)

    def run(self) -> list[dict[str, float]]:
        start = time.perf_counter()
        try:
            for it in range(self.s.num_iterations):
                metrics = self.iteration(it)
                if not all(math.isfinite(v) for v in metrics.values()):
                    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                    raise FloatingPointError(f"iteration {it + 1}: non-finite metrics {bad}")
                self.history.append(metrics)
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                self.on_event({"iteration": it, "phase": "done", "metrics": metrics})
            final = time.perf_counter()
            self.save("final")
            log.info("saved final checkpoint in %.1fs (run took %.1fs)",
                     time.perf_counter() - final, final - start)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
        return self.history

