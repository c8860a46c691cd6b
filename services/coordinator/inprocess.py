"""In-process mode: every role's engine in this process, no gRPC.

It shares every code path with the services except the transport: the same domain objects
(`Actor`, `Critic`, `FrozenCausalLM`, reward sources, `RolloutEngine`) behind the same
client interfaces, and the same `PPOLoop`. Its purpose is the overhead benchmark (services vs
in-process), and debugging a run under one debugger.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from quartet.codec.batches import RowBatch
from quartet.codec.dtypes import float_dtype
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch, ValueLossSettings
from quartet.rewards.base import RewardInputs, RewardResult
from quartet.types import PromptOutput, SamplingConfig
from quartet.weightsync import TensorSpec
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import (
    critic_model,
    frozen_dtype,
    rollout_eager,
    training_role_config,
)
from services.coordinator.ppo_loop import PPORoles

if TYPE_CHECKING:
    from quartet.engines.generation import RolloutEngine


class LocalActor:
    def __init__(self, actor) -> None:
        self.actor = actor

    def logprobs(self, batch: RowBatch, temperature: float = 1.0, header=None):
        return self.actor.logprobs(batch, temperature).logprobs

    def train_step(self, mb: PolicyMiniBatch, loss: PolicyLossSettings, header=None):
        metrics = self.actor.train_step(mb, loss)
        metrics["policy_version"] = float(self.actor.global_step)
        return metrics

    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False):
        return self.actor.save(output_dir, tag, hf_export, hf_only)

    def load(self, checkpoint_dir: str, tag: str) -> int:
        return self.actor.load(checkpoint_dir, tag)


class LocalCritic:
    def __init__(self, critic) -> None:
        self.critic = critic

    def values(self, batch: RowBatch, header=None):
        return self.critic.values(batch)

    def train_step(self, mb, loss: ValueLossSettings, header=None):
        return self.critic.train_step(mb, loss)

    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False):
        return self.critic.save(output_dir, tag, hf_export, hf_only)

    def load(self, checkpoint_dir: str, tag: str) -> int:
        return self.critic.load(checkpoint_dir, tag)


class LocalReference:
    def __init__(self, model) -> None:
        self.model = model

    def logprobs(self, batch: RowBatch, temperature: float = 1.0, header=None):
        return self.model.logprobs(batch, temperature).logprobs


class LocalReward:
    def __init__(self, fn) -> None:
        self.fn = fn

    def score(self, inputs: RewardInputs, header=None) -> RewardResult:
        return self.fn(inputs)


class LocalRollout:
    def __init__(self, engine) -> None:
        self.engine = engine

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 header=None) -> list[PromptOutput]:
        expected = header.policy_version if header is not None else None
        stream = self.engine.generate(prompts, sampling, return_text=True,
                                      expected_version=expected)
        return sorted(stream.collect(), key=lambda o: o.prompt_index)


class LocalWeightSync:
    """Actor weights straight into each rollout engine's loader (the PushWeights path)."""

    def __init__(self, actor, engines, dtype: str) -> None:
        self.actor = actor
        self.engines = engines
        self.dtype = float_dtype(dtype, "vllm.dtype")

    def __call__(self, version: int, iteration: int | None = None) -> dict[str, float]:
        """`iteration` names the update in traces of the service data planes; unused here."""
        # One snapshot for every engine: under ZeRO-3 a gathered parameter is only valid
        # while it is yielded, so it is copied, and gathered once rather than per engine.
        with self.actor.lock:
            named = [(n, t.detach().clone()) for n, t in self.actor.named_weights(self.dtype)]
        specs = [TensorSpec.of(n, t) for n, t in named]
        seconds = 0.0
        for engine in self.engines:
            result = engine.push_weights(version, specs, iter(named))
            seconds = max(seconds, result.load_seconds)
        return {"load_seconds": seconds}


class InProcessRoles:
    """Every role of `cfg` built in this process (`roles()`), as a context manager: closing
    ends the rollout engines. An in-process vLLM engine made a torch.distributed group over
    a file store (/tmp/vllm_dist_<uuid>) that only destroying the group removes; unclosed,
    every run left one behind (as the rollout service did before it closed its engine)."""

    def __init__(self, cfg: PPOJobConfig) -> None:
        self.engines: list[RolloutEngine] = []
        try:
            self._roles = _build_roles(cfg, self.engines)
        except BaseException:
            self.close()  # the engines built before the failure
            raise

    def roles(self) -> PPORoles:
        return self._roles

    def close(self) -> None:
        """Ends every rollout engine (idempotent: a closed generator ignores a second
        close)."""
        for engine in self.engines:
            engine.generator.close()

    def __enter__(self) -> InProcessRoles:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _build_roles(cfg: PPOJobConfig, engines: list[RolloutEngine]) -> PPORoles:
    """The roles; each rollout engine is appended to `engines` as soon as it is built (so
    the caller can close it whatever fails after)."""
    from quartet.engines.frozen_model import FrozenCausalLM
    from quartet.engines.generation import RolloutEngine, build_generator
    from quartet.rewards.http import RemoteHTTPReward
    from quartet.rewards.model import SequenceRegressionReward
    from quartet.rewards.rule import RuleReward
    from services.actor.actor import Actor
    from services.critic.critic import Critic

    actor = Actor(training_role_config(cfg, cfg.actor.model_name_or_path,
                                       cfg.actor.learning_rate, cfg.actor.gguf_file))
    critic = None
    if cfg.needs_critic:
        model, gguf = critic_model(cfg)
        critic = Critic(training_role_config(cfg, model, cfg.critic.learning_rate, gguf))
    reference = None
    if cfg.needs_reference:
        ref_model = cfg.ref.model_name_or_path or cfg.actor.model_name_or_path
        reference = FrozenCausalLM(ref_model, frozen_dtype(cfg), offload=cfg.ref.offload,
                                   gguf_file=cfg.actor.gguf_file
                                   if ref_model == cfg.actor.model_name_or_path else None)
    rewards = [SequenceRegressionReward(m, frozen_dtype(cfg), offload=cfg.reward.offload)
               for m in cfg.reward.model_name_or_path]
    rewards += [RuleReward(Path(f)) for f in cfg.reward.func]
    r = cfg.reward
    rewards += [RemoteHTTPReward(u, timeout_s=r.remote_timeout_s, max_retries=r.remote_retries,
                                 batch_size=r.remote_batch_size,
                                 concurrency=r.remote_concurrency) for u in r.remote_url]
    if cfg.reward.address:
        raise ValueError("--reward.address: in-process mode runs no remote reward services")
    import torch

    on_gpu = torch.cuda.is_available()
    dtype = cfg.vllm.engine_dtype(on_gpu)
    for i in range(cfg.vllm.num_engines):  # eager or compiled as the services' engines
        engines.append(RolloutEngine(build_generator(
            cfg.vllm.backend, cfg.actor.model_name_or_path, dtype=dtype,
            max_model_len=cfg.vllm.max_model_len, seed=cfg.train.seed + i,
            enforce_eager=rollout_eager(cfg, on_gpu))))
    return PPORoles(
        actor=LocalActor(actor),
        rollouts=[LocalRollout(e) for e in engines],
        rewards=[LocalReward(r) for r in rewards],
        reward_weights=list(cfg.reward.weights) or [1.0] * len(rewards),
        reference=LocalReference(reference) if reference is not None else None,
        critic=LocalCritic(critic) if critic is not None else None,
        sync_weights=LocalWeightSync(actor, engines, dtype),
    )
