"""Turns a `quartet ppo` config into running roles and the clients the loop talks to.

Embedded mode: a role without an `address` is started here as a local `quartet serve`
process on a free loopback port and stopped at the end. Cluster mode: a role with an
address is only connected to. Either way the loop sees the same `PPORoles`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import grpc

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.clients.critic import GrpcCriticClient
from quartet.clients.health import wait_for_serving
from quartet.clients.reference import GrpcReferenceClient
from quartet.clients.reward import GrpcRewardClient
from quartet.clients.rollout import GrpcRolloutClient
from quartet.config.base import config_to_argv
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig
from quartet.launch.local import LocalCluster
from quartet.launch.memory import check_budget
from quartet.launch.threads import available_cores, role_threads, thread_env
from quartet.ppo.passes import old_logprobs_from_forward
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from quartet.ppo.run_settings import train_settings
from quartet.registry import Registry
from quartet.rewards.base import RewardInputs, RewardResult
from quartet.security import TOKEN_ENV, ClientSecurity, write_token
from quartet.types import PromptOutput, SamplingConfig
from quartet.v1 import common_pb2
from services.coordinator.config import PPOJobConfig
from services.coordinator.membership import RolloutMembership, discover
from services.coordinator.memory_budget import ppo_budget
from services.coordinator.ppo_loop import PPORoles
from services.coordinator.weight_sync import GroupWeightSync, StreamedWeightSync

log = logging.getLogger("quartet.coordinator")

FROZEN_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class RolloutReplica:
    """The loop's view of one rollout service: errors name the replica; `name` labels its
    per-replica counters (the registry's replica id, or the address)."""

    def __init__(self, client: GrpcRolloutClient, timeout_s: float, name: str = "") -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.name = name or client.address

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 header: common_pb2.RequestHeader | None = None) -> list[PromptOutput]:
        try:
            return self.client.generate(prompts, sampling, return_text=True, header=header,
                                        timeout_s=self.timeout_s)
        except grpc.RpcError as exc:
            raise RoleCallError("rollout", self.client.address, "Generate", exc.code(),
                                exc.details() or "") from None


class RoundRobinReward:
    """The replicas of one reward service found in the registry, as one reward source: each
    score call goes to the next replica (they run the same reward, so they are not summed)."""

    def __init__(self, clients: list[GrpcRewardClient]) -> None:
        self.clients = clients
        self._turn = itertools.count()

    def score(self, inputs: RewardInputs,
              header: common_pb2.RequestHeader | None = None) -> RewardResult:
        return self.clients[next(self._turn) % len(self.clients)].score(inputs, header)


def training_role_config(cfg: PPOJobConfig, model: str, lr: float,
                         gguf: str | None) -> TrainingRoleConfig:
    """The actor's or critic's own config, resolved from the PPO job's flags."""
    total = cfg.train.num_iterations * cfg.steps_per_iteration
    return TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=model, gguf_file=gguf,
                          gradient_checkpointing_enable=cfg.actor.gradient_checkpointing_enable),
        ds=cfg.ds, optim=cfg.optim, adam=AdamConfig(lr=lr),
        train=RoleTrainConfig(batch_size=cfg.train.batch_size,
                              micro_batch_size=cfg.train.micro_batch_size,
                              total_steps=max(total, 1), seed=cfg.train.seed),
    )


def frozen_dtype(cfg: PPOJobConfig) -> str:
    """The reference's and reward models' dtype: the trained roles' --ds.param_dtype."""
    return FROZEN_DTYPES[cfg.ds.param_dtype]


def critic_model(cfg: PPOJobConfig) -> tuple[str, str | None]:
    """The critic starts from the (first) reward model when there is one, else the actor."""
    actor = cfg.actor.model_name_or_path
    model = cfg.critic.model_name_or_path or (
        cfg.reward.model_name_or_path[0] if cfg.reward.model_name_or_path else actor)
    return model, (cfg.actor.gguf_file if model == actor else None)


def thread_plan(cfg: PPOJobConfig, cores: int | None = None) -> dict[str, dict[str, int]]:
    """Compute threads per local role and phase (`quartet.launch.threads`)."""
    a = cfg.algo
    one_pass = old_logprobs_from_forward(
        cfg.train.max_epochs, cfg.rollout.batch_size * cfg.rollout.n_samples_per_prompt,
        cfg.train.batch_size, 0.0 if a.kl.use_loss else a.kl.init_coef, a.kl.target is not None)
    return role_threads(cores or available_cores(), actor_scores=not one_pass,
                        reference=cfg.needs_reference, critic=cfg.needs_critic,
                        reward_model=bool(cfg.reward.model_name_or_path),
                        async_generation=cfg.train.async_enable)


def rollout_eager(cfg: PPOJobConfig) -> bool:
    """`--vllm.enforce_eager`, resolved: None means eager on a host without a GPU."""
    if cfg.vllm.enforce_eager is not None:
        return cfg.vllm.enforce_eager
    import torch

    return not torch.cuda.is_available()


class PPOServices:
    """Starts (or connects to) every role the config needs; a context manager."""

    def __init__(self, cfg: PPOJobConfig, run_dir: str | Path,
                 start_timeout_s: float = 600.0, call_timeout_s: float = 3600.0) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        # The cluster token: the one configured (QUARTET_AUTH_TOKEN_FILE), else a fresh one
        # for this run that every service started here requires.
        token_file = os.environ.get(TOKEN_ENV) or str(write_token(self.run_dir / "auth-token"))
        self.security = ClientSecurity.from_env(token_file)
        self.cluster = LocalCluster(self.run_dir / "logs", env={"OMP_NUM_THREADS": "1",
                                                                TOKEN_ENV: token_file},
                                    service_args=self.service_args())
        self.threads = thread_plan(cfg)
        self.addresses: dict[str, list[str]] = {}
        self.replica_names: dict[str, str] = {}
        self.reward_replicas: list[str] = []
        """Registry mode: the replicas of the one discovered reward service."""
        self.registry = Registry(cfg.cluster.registry) if cfg.cluster.registry else None

    def service_args(self) -> list[str]:
        """Flags every locally started service gets: where its spans go, the registry."""
        otlp, trace_file = self.cfg.trace.targets(self.cfg.ckpt.output_dir)
        args = ["--trace.otlp_endpoint", otlp] if otlp else []
        if trace_file and not otlp:
            args += ["--trace.file", str(Path(trace_file).resolve())]
        if self.cfg.cluster.registry:
            args += ["--registry", self.cfg.cluster.registry]
        return args

    def _discover(self) -> dict[str, list[str]]:
        """Cluster mode with a registry: every role without a static address is looked up."""
        cfg = self.cfg
        static = {"actor": [cfg.actor.address] if cfg.actor.address else [],
                  "critic": [cfg.critic.address] if cfg.critic.address else [],
                  "reference": [cfg.ref.address] if cfg.ref.address else [],
                  "reward": list(cfg.reward.address), "rollout": list(cfg.vllm.address)}
        needed = ["actor", "reward", "rollout"] + (["critic"] if cfg.needs_critic else []) + (
            ["reference"] if cfg.needs_reference else [])
        look_up = [role for role in needed if not static[role]]
        found = discover(self.registry, look_up, self.start_timeout_s)
        for role, records in found.items():
            # one endpoint per trainable/frozen role (its ranks hide behind rank 0)
            chosen = records if role in ("reward", "rollout") else records[:1]
            self.replica_names.update({r.address: r.replica for r in chosen})
            if role == "reward":
                self.reward_replicas = [r.address for r in chosen]
            else:
                static[role] = [r.address for r in chosen]
        return static

    def _threads_env(self, role: str) -> dict[str, str]:
        return thread_env(self.threads[role])

    # ---------------------------------------------------------------- starting
    def _start_local(self) -> dict[str, list[str]]:
        cfg = self.cfg
        names: dict[str, list[str]] = {"actor": [], "critic": [], "reference": [],
                                       "reward": [], "rollout": []}
        actor_model = cfg.actor.model_name_or_path
        save_root = ["--save-root", str(self.run_dir.resolve())]
        if not cfg.actor.address:
            self.cluster.start("actor", save_root + config_to_argv(training_role_config(
                cfg, actor_model, cfg.actor.learning_rate, cfg.actor.gguf_file)),
                env=self._threads_env("actor"))
            names["actor"].append("actor")
        if cfg.needs_critic and not cfg.critic.address:
            model, gguf = critic_model(cfg)
            self.cluster.start("critic", save_root + config_to_argv(training_role_config(
                cfg, model, cfg.critic.learning_rate, gguf)), env=self._threads_env("critic"))
            names["critic"].append("critic")
        if cfg.needs_reference and not cfg.ref.address:
            ref_model = cfg.ref.model_name_or_path or actor_model
            args = ["--model", ref_model, "--dtype", frozen_dtype(cfg)]
            if cfg.actor.gguf_file and ref_model == actor_model:
                args += ["--gguf-file", cfg.actor.gguf_file]
            if cfg.ref.offload:
                args.append("--offload")
            if cfg.ds.zero_stage == 3:
                args += ["--zero-stage", "3"]
            self.cluster.start("reference", args, env=self._threads_env("reference"))
            names["reference"].append("reference")
        for i, model in enumerate(cfg.reward.model_name_or_path):
            args = ["--model", model, "--dtype", frozen_dtype(cfg)]
            self.cluster.start("reward", args + (["--offload"] if cfg.reward.offload else []),
                               name=f"reward{i}", env=self._threads_env("reward"))
            names["reward"].append(f"reward{i}")
        offset = len(cfg.reward.model_name_or_path)
        for i, func in enumerate(cfg.reward.func):
            name = f"reward{offset + i}"
            self.cluster.start("reward", ["--reward-func", str(Path(func).resolve())], name=name)
            names["reward"].append(name)
        offset += len(cfg.reward.func)
        r = cfg.reward
        for i, url in enumerate(r.remote_url):
            name = f"reward{offset + i}"
            self.cluster.start("reward", [
                "--remote-url", url, "--remote-timeout-s", repr(r.remote_timeout_s),
                "--remote-retries", str(r.remote_retries),
                "--remote-batch-size", str(r.remote_batch_size),
                "--remote-concurrency", str(r.remote_concurrency)], name=name)
            names["reward"].append(name)
        if not cfg.vllm.address:
            for i in range(cfg.vllm.num_engines):
                name = f"rollout{i}"
                args = ["--model", actor_model, "--backend", cfg.vllm.backend,
                        "--dtype", cfg.vllm.dtype, "--seed", str(cfg.train.seed + i)]
                if cfg.vllm.max_model_len:
                    args += ["--max-model-len", str(cfg.vllm.max_model_len)]
                if rollout_eager(cfg):
                    args.append("--enforce-eager")
                self.cluster.start("rollout", args, name=name)
                names["rollout"].append(name)
        return names

    def start(self) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        if self.registry is not None:
            self.addresses = self._discover()
            log.info("discovered from %s: %s", cfg.cluster.registry, self.addresses)
            return
        check_budget(ppo_budget(cfg, critic_model(cfg)[0]))
        names = self._start_local()
        if self.cluster.services:
            log.info("waiting for %d local services: %s", len(self.cluster.services),
                     ", ".join(self.cluster.services))
            self.cluster.wait_healthy(self.start_timeout_s)
        svc = self.cluster.services

        def addr(name: str) -> str:
            return svc[name].address

        self.addresses = {
            "actor": [cfg.actor.address] if cfg.actor.address else [addr("actor")],
            "critic": ([cfg.critic.address] if cfg.critic.address else
                       [addr(n) for n in names["critic"]]),
            "reference": ([cfg.ref.address] if cfg.ref.address else
                          [addr(n) for n in names["reference"]]),
            "reward": [addr(n) for n in names["reward"]] + list(cfg.reward.address),
            "rollout": list(cfg.vllm.address) or [addr(n) for n in names["rollout"]],
        }
        for role, addresses in self.addresses.items():
            for a in addresses:
                wait_for_serving(a, self.start_timeout_s, what=role)
        log.info("all services SERVING after %.1fs", time.perf_counter() - started)

    def roles(self, run_id: str = "ppo") -> PPORoles:
        """Clients of every role, with the run announced to the trainable ones (a service
        whose settings differ from the run's refuses it, naming the field)."""
        cfg, a, t, sec = self.cfg, self.addresses, self.call_timeout_s, self.security
        actor = GrpcActorClient(a["actor"][0], timeout_s=t, security=sec)
        actor.prepare_run(run_id, train_settings(training_role_config(
            cfg, cfg.actor.model_name_or_path, cfg.actor.learning_rate, cfg.actor.gguf_file)))
        critic = None
        if a["critic"]:
            critic = GrpcCriticClient(a["critic"][0], timeout_s=t, security=sec)
            model, gguf = critic_model(cfg)
            critic.prepare_run(run_id, train_settings(training_role_config(
                cfg, model, cfg.critic.learning_rate, gguf)))
        rollout_clients = [GrpcRolloutClient(x, security=sec) for x in a["rollout"]]
        rewards: list[GrpcRewardClient | RoundRobinReward] = [
            GrpcRewardClient(x, timeout_s=t, security=sec) for x in a["reward"]]
        if self.reward_replicas:
            rewards.append(RoundRobinReward([GrpcRewardClient(x, timeout_s=t, security=sec)
                                             for x in self.reward_replicas]))
        weights = list(cfg.reward.weights) or [1.0] * len(rewards)
        backend = cfg.vllm.sync_backend
        if backend == "grpc" or (backend == "auto" and self.registry is not None):
            sync = StreamedWeightSync(actor, rollout_clients, cfg.vllm.dtype, run_id=run_id)
        else:
            if backend == "auto":
                import torch

                backend = "nccl" if torch.cuda.is_available() else "gloo"
            master = cfg.vllm.sync_master_address or (
                cfg.actor.address.rsplit(":", 1)[0] if cfg.actor.address else "127.0.0.1")
            sync = GroupWeightSync(actor, rollout_clients, backend, cfg.vllm.dtype,
                                   cfg.vllm.sync_bucket_mb << 20, master_address=master,
                                   run_id=run_id)
        sync.setup()
        if any(c.info().weight_version != 0 for c in rollout_clients):
            # Replicas that served an earlier run hold its last weights: the run starts by
            # giving them the actor's current weights as its version 0.
            log.info("rollout replicas served an earlier run; syncing the actor's weights as "
                     "version 0 of run %s", run_id)
            sync(0)
        replicas = [RolloutReplica(c, t, self.replica_names.get(c.address, ""))
                    for c in rollout_clients]
        return PPORoles(
            actor=actor,
            rollouts=replicas,
            rewards=rewards,
            reward_weights=weights,
            reference=GrpcReferenceClient(a["reference"][0], timeout_s=t, security=sec)
            if a["reference"]
            else None,
            critic=critic,
            sync_weights=sync,
            refresh_rollouts=self.membership(replicas, sync) if self.registry else None,
        )

    def membership(self, replicas: list[RolloutReplica],
                   sync: StreamedWeightSync | GroupWeightSync) -> RolloutMembership:
        if not isinstance(sync, StreamedWeightSync):
            raise ValueError("--registry: rollout replicas that come and go need "
                             "--vllm.sync_backend grpc (a torch.distributed weight group has "
                             "a fixed membership)")
        t = self.call_timeout_s
        return RolloutMembership(
            self.registry, {r.name: r for r in replicas},
            make_replica=lambda rec: RolloutReplica(
                GrpcRolloutClient(rec.address, security=self.security), t, rec.replica),
            catch_up=lambda replica, version: sync.catch_up(replica.client, version),
            on_change=lambda current: sync.set_rollouts([r.client for r in current]))

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.close()
        codes = self.cluster.stop()
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        if bad:
            log.warning("services exited with non-zero codes: %s", bad)

    def __enter__(self) -> PPOServices:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
