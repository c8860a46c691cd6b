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
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from quartet.algos.kl import AdaptiveKLController, FixedKLController
from quartet.algos.rewards import RunningMeanStd
from quartet.clients.base import RoleCallError
from quartet.codec.batches import RowBatch
from quartet.ppo.batch import PolicyLossSettings, ValueLossSettings
from quartet.ppo.experience import (
    AdvantageSettings,
    Experience,
    experience_stats,
    make_experience,
)
from quartet.ppo.minibatches import epoch_order
from quartet.ppo.passes import old_logprobs_from_forward
from quartet.telemetry import ContextThreadPoolExecutor, PhaseTimer, iteration_trace
from quartet.types import SamplingConfig
from quartet.v1 import common_pb2
from services.coordinator.checkpoint import (
    CoordinatorState,
    RunCheckpoints,
    capture_rng,
    restore_rng,
)
from services.coordinator.recovery import Repair
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


class RewindNeeded(Exception):
    """The actor or critic restarted: their state is the last checkpoint's now."""


# --------------------------------------------------------------------------- role interfaces
class ActorClient(Protocol):
    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: PolicyLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...
    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False) -> Any: ...
    def load(self, checkpoint_dir: str, tag: str) -> int: ...


class Recovery(Protocol):
    """Restarts dead role processes (services/coordinator/recovery.py)."""

    def repair(self, error: RoleCallError) -> Repair: ...


class CriticClient(Protocol):
    def values(self, batch: RowBatch,
               header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...
    def train_step(self, mb, loss: ValueLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]: ...
    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False) -> Any: ...
    def load(self, checkpoint_dir: str, tag: str) -> int: ...


class ReferenceClient(Protocol):
    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]: ...


class EarlySync(Protocol):
    """Begins the next weight update while the last mini-batch trains (GroupWeightSync)."""

    def open(self, version: int, iteration: int) -> None: ...
    def cancel(self, reason: str) -> None: ...


@dataclass
class PPORoles:
    actor: ActorClient
    rollouts: Sequence[RolloutClient]
    rewards: Sequence[RewardSource]
    reward_weights: Sequence[float] = ()
    reference: ReferenceClient | None = None
    critic: CriticClient | None = None
    sync_weights: Callable[[int, int | None], dict[str, float]] | None = None
    """Pushes the actor's weights to every rollout replica as `version` (the update of
    `iteration`, for traces; None on a rewind); returns stats."""
    refresh_rollouts: Callable[[int, int], tuple[list[RolloutClient], dict[str, float]]] | None = (
        None)
    """Cluster mode: (iteration, version) -> the rollout replicas to use from now on (new
    ones already at `version`) and membership metrics; called before each iteration."""
    release_memory: Callable[[str, int], None] | None = None
    """(phase, iteration): roles done with `phase` give back memory they need only in it
    (services/coordinator/phase_memory.py); called in synchronous runs only."""
    early_sync: EarlySync | None = None
    """Opens the coming sync's update on the replicas while the last mini-batch trains
    (synchronous runs only; `sync_weights` then only broadcasts); cancelled if training
    fails."""


def add_step_metrics(sums: dict[str, float], futures: dict[str, Future]) -> None:
    """Waits for one mini-batch's steps (role -> future) and adds their metrics to `sums`
    as `role/name`; a failed step raises its error once every step of it has ended."""
    wait(futures.values())
    for role, fut in futures.items():
        for k, v in fut.result().items():
            sums[f"{role}/{k}"] = sums.get(f"{role}/{k}", 0.0) + v


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
    policy_loss.is_correction for importance-sampling correction."""
    pipeline_train_steps: bool = False
    """Send mini-batch k+1's TrainSteps while k trains, to services that order their steps
    (`ordered_train_steps`); `--train.pipeline_steps`, off by default (measured slower on
    the 2-core CPU host, docs/benchmarks.md "Ninth pass (pipe)")."""
    freeze_actor_steps: int = 0
    """Iterations at the start that train only the critic (value warm-up)."""
    save_steps: int = -1
    """Save a checkpoint every this many iterations; -1 only at the end."""
    resume: bool = False
    """Start from the latest checkpoint when there is one (--ckpt.load_enable)."""
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
        checkpoints: RunCheckpoints | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self.roles = roles
        self.s = settings
        self.checkpoints = checkpoints
        """Resumable checkpoints; None saves only the final HF export (--ckpt.disable_ds)."""
        self.recovery = recovery
        """Restarts dead role processes; None lets a role failure end the run."""
        self.start_iteration = 0
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
        # async mode: the batch generating ahead, and the data position before it started
        self._pending: tuple[Future[Rollouts], dict[str, Any]] | None = None
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
        """This iteration's samples: collected now, or by the background thread (async).

        A failed collection puts the data position back, so a re-run takes the same prompts
        (a failed batch generated ahead is then regenerated with the current weights)."""
        if self._pending is not None:
            (future, before), self._pending = self._pending, None
        else:
            before = self.collector.state()
            future = None
        try:
            rollouts = (future.result() if future is not None
                        else self.collector.collect(it, self.version))
        except RoleCallError:
            self.collector.restore(before)
            raise
        if self.s.async_generation and it + 1 < self.s.num_iterations:
            # generated with the current weights while this batch trains: staleness 1
            ahead = self.collector.state()
            self._pending = (self._background.submit(self.collector.collect, it + 1,
                                                     self.version, 1), ahead)
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
        """PPO epochs over shuffled mini-batches; actor and critic step in parallel.

        Pipelined (`--train.pipeline_steps`) when both services order their steps
        (`ordered_train_steps`): mini-batch k+1 leaves while k trains, naming k as the step
        it follows, so each server has it decoded and queued when k ends instead of waiting
        for the reply to come back and the next request to arrive
        (quartet.serving.step_order). The steps, their order and
        their inputs are the same either way."""
        size = self.s.mini_batch_size
        loss = self.s.policy_loss
        if self.s.kl_in_loss:
            loss = PolicyLossSettings(**{**asdict(loss), "kl_coef": self.kl_ctl.value})
        if exp.old_logprobs is None:
            loss = PolicyLossSettings(**{**asdict(loss), "old_logprobs_from_forward": True})
        steppers: dict[str, tuple[Any, Callable[[Any], Any], Any]] = {}
        if iteration >= self.s.freeze_actor_steps:
            steppers["actor"] = (self.roles.actor, exp.policy_minibatch, loss)
        if self.roles.critic is not None:
            steppers["critic"] = (self.roles.critic, exp.value_minibatch, self.s.value_loss)
        # whole prompt groups per mini-batch: micro-batches compute a group's prompt once;
        # every epoch's order drawn up front (the same draws of self.rng, in the same order)
        plan = [order[start : start + size]
                for order in (epoch_order(len(exp), self.s.n_samples_per_prompt, size, self.rng)
                              for _ in range(self.s.ppo_epochs))
                for start in range(0, len(exp) - size + 1, size)]
        ahead = int(self.s.pipeline_train_steps and bool(steppers) and all(
            getattr(client, "ordered_train_steps", False) for client, _, _ in steppers.values()))
        # request ids unique to this attempt: a re-run phase must not follow the old steps
        tag = f"@{uuid.uuid4().hex[:8]}" if ahead else ""
        previous: dict[str, str] = {}
        in_flight: deque[dict[str, Future]] = deque()
        sums: dict[str, float] = {}
        early: EarlySync | None = None
        try:
            for step, index in enumerate(plan):
                futures = {}
                for role, (client, minibatch, role_loss) in steppers.items():
                    header = self.header(iteration, f"{role}_train{step}{tag}")
                    if ahead:
                        header.after_request_id = previous.get(role, "")
                        previous[role] = header.request_id
                    futures[role] = self.pool.submit(client.train_step, minibatch(index),
                                                     role_loss, header)
                in_flight.append(futures)
                if step == len(plan) - 1:
                    # the last steps have left and train: open the sync now (not before the
                    # last requests, whose sending it would slow down)
                    while len(in_flight) > 1:
                        add_step_metrics(sums, in_flight.popleft())
                    early = self.open_sync_early(iteration)
                while len(in_flight) > ahead:
                    add_step_metrics(sums, in_flight.popleft())
            while in_flight:
                add_step_metrics(sums, in_flight.popleft())
        except BaseException as exc:
            for futures in in_flight:  # none may still apply while the phase is redone
                wait(futures.values())
            if early is not None:
                early.cancel(f"the training before it failed: {exc}")
            raise
        steps = len(plan)
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out["train_steps"] = float(steps)
        return out

    def open_sync_early(self, iteration: int) -> EarlySync | None:
        """While the last mini-batch trains: the replicas open the coming update (not in
        async mode: they generate then). Returns what to cancel if training fails."""
        early = self.roles.early_sync
        if early is None or self.s.async_generation:
            return None
        early.open(self.version + 1, iteration)
        return early

    def release_memory(self, phase: str, iteration: int) -> None:
        """Roles done with `phase` free memory until it comes again (not in async mode: the
        rollouts generate there while the actor trains)."""
        release = self.roles.release_memory
        if release is not None and not self.s.async_generation:
            self.repaired(lambda: release(phase, iteration))

    def sync(self, iteration: int) -> dict[str, float]:
        self.version += 1
        if self.roles.sync_weights is None:
            return {}
        sync = self.roles.sync_weights
        return self.repaired(lambda: sync(self.version, iteration))

    # ---------------------------------------------------------------- role failures
    def repaired(self, phase: Callable[[], Any], applies_updates: bool = False) -> Any:
        """Runs `phase`; when a role call fails and the recovery restarted the dead process,
        runs it again. Raises RewindNeeded when the actor or critic restarted, or when the
        phase had applied updates (only a checkpoint undoes them)."""
        while True:
            try:
                return phase()
            except RoleCallError as exc:
                if self.recovery is None:
                    raise
                repair = self.recovery.repair(exc)
                self.on_event({"iteration": self.start_iteration, "phase": "recover",
                               "restarted": repair.restarted, "retired": repair.retired})
                if repair.retired:
                    gone = set(repair.retired)
                    self.collector.replicas = [r for r in self.collector.replicas
                                               if getattr(r, "address", None) not in gone]
                if repair.rewind or applies_updates:
                    raise RewindNeeded(str(exc)) from exc
                log.warning("re-running the interrupted phase after restarting %s",
                            ", ".join(repair.restarted) or "nothing")

    # ---------------------------------------------------------------- resumable state
    def state(self, iteration: int) -> CoordinatorState:
        """The coordinator's state after `iteration` iterations (waits for an async batch
        generating ahead: it is part of the state)."""
        pending = None
        if self._pending is not None:
            future, before = self._pending
            try:
                pending = future.result()
            except RoleCallError:
                # the next iteration regenerates it; the checkpoint keeps the data position
                self._pending = None
                self.collector.restore(before)
        python_rng, torch_rng = capture_rng()
        return CoordinatorState(
            iteration=iteration, policy_version=self.version, seed=self.s.seed,
            loop_rng=self.rng.getstate(), collector=self.collector.state(),
            kl=self.kl_ctl.state_dict(), reward_stats=self.reward_stats.state_dict(),
            history=list(self.history), pending=pending, python_rng=python_rng,
            torch_rng=torch_rng)

    def load_state(self, state: CoordinatorState) -> int:
        """Restores `state`; returns the iteration to run next."""
        if state.seed != self.s.seed:
            raise ValueError(f"--ckpt.load_enable: the checkpoint was taken with --train.seed "
                             f"{state.seed}, this run has {self.s.seed}")
        if self._pending is not None:  # a batch generating ahead belongs to the abandoned past
            self._pending[0].exception()
            self._pending = None
        self.version = state.policy_version
        self.rng.setstate(state.loop_rng)
        self.collector.restore(state.collector)
        self.kl_ctl.load_state_dict(state.kl)
        self.reward_stats.load_state_dict(state.reward_stats)
        self.history = list(state.history)
        if state.pending is not None:
            done: Future[Rollouts] = Future()
            done.set_result(state.pending)
            self._pending = (done, self.collector.state())
        restore_rng(state)
        tmp = self.metrics_path.with_suffix(".jsonl.part")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        tmp.replace(self.metrics_path)
        return state.iteration

    def restore(self, rewinding: bool) -> int:
        """Actor, critic and coordinator back to the latest checkpoint, and every rollout
        replica to its policy; returns the iteration to run next."""
        if self.checkpoints is None or (ckpt := self.checkpoints.latest()) is None:
            if rewinding:
                raise RuntimeError("the actor or critic restarted but there is no checkpoint "
                                   "to rewind to (--ckpt.disable_ds is set)")
            return 0
        log.info("%s from checkpoint %s", "rewinding" if rewinding else "resuming", ckpt)
        self.repaired(lambda: self.checkpoints.load_roles(ckpt))
        it = self.load_state(self.checkpoints.load_state(ckpt))
        # fresh replicas already serve version 0; after a rewind they serve a newer policy
        if self.roles.sync_weights is not None and (rewinding or self.version > 0):
            sync = self.roles.sync_weights
            self.repaired(lambda: sync(self.version, None))
        self.start_iteration = it
        return it

    def save_checkpoint(self, iteration: int) -> None:
        if self.checkpoints is not None:
            state = self.state(iteration)
            path = self.repaired(lambda: self.checkpoints.save(state))
            self.on_event({"iteration": iteration, "phase": "checkpoint", "path": str(path),
                           "policy_version": self.version})

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
            collected = self.repaired(lambda: self.rollouts(it))
            timer.annotate(rows=len(collected))
        staleness = self.version - collected.weight_version
        rollouts = self.trim_to_minibatches(collected)
        if rollouts is None:
            log.warning("iteration %d: too few prompt groups passed dynamic filtering to fill "
                        "one mini-batch; no update this iteration", it + 1)
            return {"iteration": float(it + 1), "reward": float(collected.rewards.mean()),
                    "skipped": 1.0, "policy_version": float(self.version),
                    **collected.extra, **{f"time/{k}": v for k, v in timer.seconds.items()}}
        self.release_memory("generate", it)
        batch, rewards = rollouts.batch, rollouts.rewards
        self.on_event({"iteration": it, "phase": "score"})
        one_pass = self.one_pass(len(batch))
        with timer("score"):
            old_lp, ref_lp, values = self.repaired(
                lambda: self.score(batch, it, actor_pass=not one_pass))
        self.release_memory("score", it)
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
            train_metrics = self.repaired(lambda: self.train(exp, it), applies_updates=True)
        self.on_event({"iteration": it, "phase": "sync"})
        with timer("sync"):
            sync_metrics = self.sync(it)
        stats = experience_stats(exp)
        self.kl_ctl.update(stats["kl"], len(exp))
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

    def export_final(self) -> None:
        """The policy as a Hugging Face model under checkpoints/hf/final."""
        path = str((self.out / "checkpoints").resolve())
        self.repaired(lambda: self.roles.actor.save(path, hf_export=True, tag="final",
                                                    hf_only=True))
        self.on_event({"iteration": len(self.history), "phase": "checkpoint",
                       "path": f"{path}/hf/final", "policy_version": self.version})

    def rewind(self, reason: Exception) -> int:
        """Back to the latest checkpoint after the actor or critic restarted (again, if it
        dies during the rewind itself: each restart spends the recovery's budget)."""
        while True:
            log.warning("%s; rewinding to the last checkpoint", reason)
            try:
                return self.restore(rewinding=True)
            except RewindNeeded as again:
                reason = again

    def run(self, stop: threading.Event | None = None) -> list[dict[str, float]]:
        """All iterations (or until `stop` is set: the current iteration finishes), then
        the final checkpoint. With `resume`, starts after the latest checkpoint."""
        start = time.perf_counter()
        try:
            it = 0
            if self.s.resume:
                try:
                    it = self.restore(rewinding=False)
                except RewindNeeded as exc:
                    it = self.rewind(exc)
                if it:
                    log.info("resumed after iteration %d (policy version %d)", it,
                             self.version)
            first = it
            while True:
                try:
                    stopping = stop is not None and stop.is_set()
                    if stopping and it == first:
                        # stopped during start-up (or right after a resume): the weights are
                        # the ones loaded, so a checkpoint or an hf/final export of them
                        # would only pass off the starting model as a trained policy
                        log.info("stop requested before the first iteration; nothing to save")
                        break
                    if self.recovery is not None and self.checkpoints is not None \
                            and self.checkpoints.latest() is None:
                        self.save_checkpoint(it)  # a restarted actor/critic reloads this
                    if it < self.s.num_iterations and not stopping:
                        self.start_iteration = it
                        self._one_iteration(it)
                        it += 1
                        if self.s.save_steps > 0 and it % self.s.save_steps == 0:
                            self.save_checkpoint(it)
                        continue
                    if stopping:
                        log.info("stop requested; ending after %d iterations", it)
                    final = time.perf_counter()
                    self.save_checkpoint(it)
                    self.export_final()
                    log.info("saved final checkpoint in %.1fs (run took %.1fs)",
                             time.perf_counter() - final, final - start)
                    break
                except RewindNeeded as exc:
                    it = self.rewind(exc)
        finally:
            self.close()
        return self.history

    def _one_iteration(self, it: int) -> None:
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
