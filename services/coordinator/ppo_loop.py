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
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from quartet.algos.kl import AdaptiveKLController, FixedKLController
from quartet.algos.rewards import RunningMeanStd
from quartet.codec.batches import RowBatch
from quartet.ppo.batch import PolicyLossSettings, ValueLossSettings
from quartet.ppo.experience import (
    AdvantageSettings,
    Experience,
    experience_stats,
    make_experience,
)
from quartet.ppo.passes import old_logprobs_from_forward
from quartet.telemetry import ContextThreadPoolExecutor, PhaseTimer, iteration_trace
from quartet.types import SamplingConfig
from quartet.v1 import common_pb2
from services.coordinator.rollouts import (
    FilterSettings,
    Prompt,
    RewardShaping,
    RewardSource,
    RolloutClient,
    RolloutCollector,
    Rollouts,
)

log = logging.getLogger("quartet.coordinator")

PHASES = ("generate", "score", "advantage", "train", "sync", "checkpoint")


# --------------------------------------------------------------------------- role interfaces
class ActorClient(Protocol):
    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: PolicyLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...
    def save(self, output_dir: str, hf_export: bool = True, tag: str = "") -> Any: ...


class CriticClient(Protocol):
    def values(self, batch: RowBatch,
               header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: ValueLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...


class ReferenceClient(Protocol):
    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...


@dataclass
class PPORoles:
    actor: ActorClient
    rollouts: Sequence[RolloutClient]
    rewards: Sequence[RewardSource]
    reward_weights: Sequence[float] = ()
    reference: ReferenceClient | None = None
    critic: CriticClient | None = None
    sync_weights: Callable[[int], dict[str, float]] | None = None
    """Pushes the actor's weights to every rollout replica as `version`; returns stats."""
    refresh_rollouts: Callable[[int, int], tuple[list[RolloutClient], dict[str, float]]] | None = (
        None)
    """Cluster mode: (iteration, version) -> the rollout replicas to use from now on (new
    ones already at `version`) and membership metrics; called before each iteration."""


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
    shaping: RewardShaping = field(default_factory=RewardShaping)
    filtering: FilterSettings = field(default_factory=FilterSettings)
    async_generation: bool = False
    """Generate iteration k+1 while iteration k trains (staleness 1); pair with
    policy_loss.is_correction_cap for truncated importance sampling."""
    freeze_actor_steps: int = 0
    """Iterations at the start that train only the critic (value warm-up)."""
    save_steps: int = -1
    """Save a checkpoint every this many iterations; -1 only at the end."""
    output_dir: str = "runs/ppo"
    seed: int = 42
    run_id: str = "ppo"


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
        self.roles = roles
        self.s = settings
        self.on_event = on_event or (lambda event: None)
        self.version = 0
        self.rng = random.Random(settings.seed)
        shaping = settings.shaping
        if not shaping.weights and roles.reward_weights:
            shaping = RewardShaping(**{**asdict(shaping), "weights": roles.reward_weights})
        self.collector = RolloutCollector(
            roles.rollouts, roles.rewards, prompts, settings.sampling,
            settings.prompts_per_iteration, shaping, settings.filtering, settings.seed,
            decode, settings.run_id)
        self._pending: Future[Rollouts] | None = None
        self._background = ContextThreadPoolExecutor(max_workers=1,
                                                     thread_name_prefix="async-gen")
        self.kl_ctl = (
            AdaptiveKLController(settings.init_kl_coef, settings.kl_target, settings.kl_horizon)
            if settings.kl_target else FixedKLController(settings.init_kl_coef)
        )
        self.reward_stats = RunningMeanStd()
        self.pool = ContextThreadPoolExecutor(max_workers=8, thread_name_prefix="ppo")
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

    # ---------------------------------------------------------------- phases
    def rollouts(self, it: int) -> Rollouts:
        """This iteration's samples: collected now, or by the background thread (async)."""
        if self._pending is not None:
            rollouts, self._pending = self._pending.result(), None
        else:
            rollouts = self.collector.collect(it, self.version)
        if self.s.async_generation and it + 1 < self.s.num_iterations:
            # generated with the current weights while this batch trains: staleness 1
            self._pending = self._background.submit(self.collector.collect, it + 1,
                                                    self.version, 1)
        return rollouts

    def one_pass(self, rows: int) -> bool:
        """Whether the actor's training forward gives the old log-probs this iteration."""
        reward_kl = 0.0 if self.s.kl_in_loss else self.kl_ctl.value
        return old_logprobs_from_forward(self.s.ppo_epochs, rows, self.s.mini_batch_size,
                                         reward_kl, self.s.kl_target is not None)

    def score(self, batch: RowBatch, iteration: int, actor_pass: bool = True):
        """Actor log-probs (unless one-pass), reference log-probs and critic values, in
        parallel."""
        temp = self.s.policy_loss.temperature
        actor = (self.pool.submit(self.roles.actor.logprobs, batch, temp,
                                  self.header(iteration, "actor_logprobs"))
                 if actor_pass else None)
        ref = (self.pool.submit(self.roles.reference.logprobs, batch, temp,
                                self.header(iteration, "ref_logprobs"))
               if self.roles.reference is not None else None)
        critic = (self.pool.submit(self.roles.critic.values, batch,
                                   self.header(iteration, "values"))
                  if self.roles.critic is not None else None)
        return (actor.result() if actor else None, ref.result() if ref else None,
                critic.result() if critic else None)

    def trim_to_minibatches(self, r: Rollouts) -> Rollouts | None:
        """After filtering: the most whole prompt groups that fill whole mini-batches."""
        n, size = self.s.n_samples_per_prompt, self.s.mini_batch_size
        groups = r.groups(n)
        while groups and (groups * n) % size:
            groups -= 1
        if groups == 0:
            return None
        return r if groups * n == len(r) else r.take_groups(list(range(groups)), n)

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
        if exp.old_logprobs is None:
            loss = PolicyLossSettings(**{**asdict(loss), "old_logprobs_from_forward": True})
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
    def refresh_rollouts(self, it: int) -> dict[str, float]:
        """Replicas that left are dropped and new ones join (registry mode)."""
        assert self.roles.refresh_rollouts is not None
        replicas, metrics = self.roles.refresh_rollouts(it, self.version)
        self.collector.replicas = replicas
        return metrics

    def iteration(self, it: int) -> dict[str, float]:
        timer = PhaseTimer(run_id=self.s.run_id, iteration=it, policy_version=self.version)
        membership: dict[str, float] = {}
        if self.roles.refresh_rollouts is not None:
            with timer("replicas"):
                membership = self.refresh_rollouts(it)
        self.on_event({"iteration": it, "phase": "generate"})
        with timer("generate"):
            collected = self.rollouts(it)
            timer.annotate(rows=len(collected))
        staleness = self.version - collected.weight_version
        rollouts = self.trim_to_minibatches(collected)
        if rollouts is None:
            log.warning("iteration %d: too few prompt groups passed dynamic filtering to fill "
                        "one mini-batch; no update this iteration", it + 1)
            return {"iteration": float(it + 1), "reward": float(collected.rewards.mean()),
                    "skipped": 1.0, "policy_version": float(self.version),
                    **collected.extra, **{f"time/{k}": v for k, v in timer.seconds.items()}}
        batch, rewards = rollouts.batch, rollouts.rewards
        self.on_event({"iteration": it, "phase": "score"})
        one_pass = self.one_pass(len(batch))
        with timer("score"):
            old_lp, ref_lp, values = self.score(batch, it, actor_pass=not one_pass)
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
                                  rollout_logprobs=rollouts.rollout_logprobs)
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
            "truncated_fraction": sum(rollouts.truncated) / max(len(rollouts.truncated), 1),
            "kl_coef": float(self.kl_ctl.value),
            "policy_version": float(self.version),
            "rollout_weight_version": float(rollouts.weight_version),
            "staleness": float(staleness),
            **train_metrics,
            **{f"sync/{k}": v for k, v in sync_metrics.items()},
            **rollouts.extra,
            **membership,
            **{f"time/{k}": v for k, v in timer.seconds.items()},
        }
        return metrics

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.collector.close()

    def save(self, tag: str) -> None:
        path = str((self.out / "checkpoints").resolve())
        self.roles.actor.save(path, hf_export=True, tag=tag)
        self.on_event({"iteration": len(self.history), "phase": "checkpoint",
                       "path": f"{path}/hf/{tag}", "policy_version": self.version})

    def run(self, stop: threading.Event | None = None) -> list[dict[str, float]]:
        """All iterations (or until `stop` is set), then the final checkpoint."""
        start = time.perf_counter()
        try:
            for it in range(self.s.num_iterations):
                if stop is not None and stop.is_set():
                    log.info("stop requested; ending after %d iterations", it)
                    break
                with iteration_trace(self.s.run_id, it, self.version) as traced:
                    metrics = self.iteration(it)
                    traced.record(metrics)
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
            self.close()
        return self.history

