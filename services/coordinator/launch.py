"""Turns a `quartet ppo` config into running roles and the clients the loop talks to.

Embedded mode: a role without an `address` is placed (`services/coordinator/placement.py`)
and started by the launcher (`--launcher local`: `quartet serve` processes on this host;
`ray`: the same processes in Ray placement groups), and stopped at the end. Cluster mode: a
role with an address is only connected to. Either way the loop sees the same `PPORoles`.
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
from quartet.launch.launcher import Launcher, ServiceCommand
from quartet.launch.local_launcher import LocalLauncher
from quartet.launch.memory import check_budget
from quartet.launch.placement import PlacementPlan
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
from services.coordinator.memory_budget import (
    ppo_budget,
    rollout_kv_cache_bytes,
    rollout_max_model_len,
)
from services.coordinator.phase_memory import PhaseMemory
from services.coordinator.placement import ppo_placement
from services.coordinator.ppo_loop import PPORoles
from services.coordinator.recovery import RestartPolicy, RoleRecovery
from services.coordinator.weight_sync import (
    GroupWeightSync,
    StreamedWeightSync,
    WeightSync,
    WireVersions,
)

log = logging.getLogger("quartet.coordinator")

FROZEN_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class RolloutReplica:
    """The loop's view of one rollout service: errors name the replica; `name` labels its
    per-replica counters (the registry's replica id, or the address); weight versions are the
    loop's policy versions (the replica sees `WireVersions`)."""

    def __init__(self, client: GrpcRolloutClient, timeout_s: float, name: str = "",
                 versions: WireVersions | None = None) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.name = name or client.address
        self.versions = versions or WireVersions()

    @property
    def address(self) -> str:
        return self.client.address

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 header: common_pb2.RequestHeader | None = None) -> list[PromptOutput]:
        if header is not None:
            wire = common_pb2.RequestHeader()
            wire.CopyFrom(header)
            wire.policy_version = self.versions.to_wire(header.policy_version)
            header = wire
        try:
            outputs = self.client.generate(prompts, sampling, return_text=True, header=header,
                                           timeout_s=self.timeout_s)
        except grpc.RpcError as exc:
            raise RoleCallError("rollout", self.client.address, "Generate", exc.code(),
                                exc.details() or "") from None
        for out in outputs:
            out.weight_version = self.versions.from_wire(out.weight_version)
        return outputs


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
                          gradient_checkpointing_enable=cfg.actor.gradient_checkpointing_enable,
                          gradient_checkpointing_policy=cfg.actor.gradient_checkpointing_policy),
        ds=cfg.ds, optim=cfg.optim, adam=AdamConfig(lr=lr),
        train=RoleTrainConfig(batch_size=cfg.train.batch_size,
                              micro_batch_size=cfg.train.micro_batch_size,
                              total_steps=max(total, 1), seed=cfg.train.seed),
    )


def frozen_dtype(cfg: PPOJobConfig) -> str:
    """The reference's and reward models' dtype: the trained roles' --ds.param_dtype."""
    return FROZEN_DTYPES[cfg.ds.param_dtype]


def frozen_args(cfg: PPOJobConfig, offload: bool) -> list[str]:
    """How the reference and each reward model hold their weights: the trained roles'
    dtype, `--offload` from --ref.offload / --reward.offload, and under --ds.zero_stage 3
    ZeRO-3 sharding over their own ranks."""
    return (["--dtype", frozen_dtype(cfg)] + (["--offload"] if offload else [])
            + (["--zero-stage", "3"] if cfg.ds.zero_stage == 3 else []))


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
                        async_generation=cfg.train.async_enable,
                        rollouts=0 if cfg.vllm.address else cfg.vllm.num_engines)


def rollout_eager(cfg: PPOJobConfig, on_gpu: bool) -> bool:
    """`--vllm.enforce_eager`, resolved: None means eager where the engines have no GPU."""
    if cfg.vllm.enforce_eager is not None:
        return cfg.vllm.enforce_eager
    return not on_gpu


def save_root(cfg: PPOJobConfig, run_dir: Path) -> str:
    """Where the actor/critic this run starts may Save and Load: the run directory and the
    run checkpoints (--ckpt.path), which may lie elsewhere."""
    return os.path.commonpath([str(run_dir.resolve()), str(Path(cfg.ckpt.ds_path).resolve())])


def service_commands(cfg: PPOJobConfig, device_kind: str,
                     threads: dict[str, dict[str, int]],
                     save_root: str = ".",
                     kv_cache_bytes: int | None = None,
                     run_context: int | None = None) -> dict[str, ServiceCommand]:
    """The `quartet serve` command of every service this run starts, by service name;
    `threads`: per role and phase (`thread_plan`), passed in the environment; `save_root`:
    the actor's and critic's `--save-root`; `kv_cache_bytes`: each rollout engine's KV
    cache (`rollout_kv_cache_bytes`; None: the engine's default); `run_context`: the
    rollouts' context sized from the run (`rollout_max_model_len` without
    --vllm.max_model_len), which they then enforce (`--strict-context`)."""
    cmds: dict[str, ServiceCommand] = {}
    actor_model = cfg.actor.model_name_or_path
    root = ("--save-root", save_root)
    if not cfg.actor.address:
        cmds["actor"] = ServiceCommand("actor", root + tuple(config_to_argv(
            training_role_config(cfg, actor_model, cfg.actor.learning_rate,
                                 cfg.actor.gguf_file))), thread_env(threads["actor"]))
    if cfg.needs_critic and not cfg.critic.address:
        model, gguf = critic_model(cfg)
        cmds["critic"] = ServiceCommand("critic", root + tuple(config_to_argv(
            training_role_config(cfg, model, cfg.critic.learning_rate, gguf))),
            thread_env(threads["critic"]))
    if cfg.needs_reference and not cfg.ref.address:
        ref_model = cfg.ref.model_name_or_path or actor_model
        args = ["--model", ref_model, *frozen_args(cfg, cfg.ref.offload)]
        if cfg.actor.gguf_file and ref_model == actor_model:
            args += ["--gguf-file", cfg.actor.gguf_file]
        if cfg.ref.enable_sleep:
            args += ["--enable-sleep", "--spill-dir", str(Path(cfg.ckpt.output_dir).resolve())]
        cmds["reference"] = ServiceCommand("reference", tuple(args),
                                           thread_env(threads["reference"]))
    r = cfg.reward
    sources = ([["--model", m, *frozen_args(cfg, r.offload)] for m in r.model_name_or_path]
               + [["--reward-func", str(Path(f).resolve())] for f in r.func]
               + [["--remote-url", url, "--remote-timeout-s", repr(r.remote_timeout_s),
                   "--remote-retries", str(r.remote_retries),
                   "--remote-batch-size", str(r.remote_batch_size),
                   "--remote-concurrency", str(r.remote_concurrency)] for url in r.remote_url])
    for i, args in enumerate(sources):  # reward models get the reward role's threads
        env = thread_env(threads["reward"]) if i < len(r.model_name_or_path) else {}
        cmds[f"reward{i}"] = ServiceCommand("reward", tuple(args), env)
    if not cfg.vllm.address:
        v = cfg.vllm
        for i in range(v.num_engines):
            args = ["--model", actor_model, "--backend", v.backend,
                    "--dtype", v.engine_dtype(device_kind == "cuda"),
                    "--seed", str(cfg.train.seed + i),
                    "--tensor-parallel-size", str(v.tensor_parallel_size),
                    "--gpu-memory-utilization", repr(v.gpu_memory_utilization)]
            if v.max_model_len:
                args += ["--max-model-len", str(v.max_model_len)]
            elif run_context:
                args += ["--max-model-len", str(run_context), "--strict-context"]
            if kv_cache_bytes is not None:
                args += ["--kv-cache-bytes", str(kv_cache_bytes)]
            if rollout_eager(cfg, device_kind == "cuda"):
                args.append("--enforce-eager")
            if cfg.train.colocate_all_models:
                args.append("--sleep-when-idle")
            if v.enable_sleep:
                args.append("--enable-sleep")
            cmds[f"rollout{i}"] = ServiceCommand("rollout", tuple(args),
                                                 thread_env(threads["rollout"]))
    return cmds


def make_launcher(cfg: PPOJobConfig, log_dir: Path, service_args: list[str],
                  env: dict[str, str] | None = None) -> Launcher:
    """`service_args` go to every service (`PPOServices.service_args`), `env` to its
    environment (the cluster token file)."""
    env = {**thread_env({}), **(env or {})}  # one thread unless a role's plan says more
    if cfg.launch.launcher == "ray":
        from quartet.launch.ray_launcher import RayLauncher

        return RayLauncher(log_dir, address=cfg.ray.address, env=env,
                           service_args=service_args)
    return LocalLauncher(log_dir, env=env, service_args=service_args)


def on_gpus(plan: PlacementPlan | None, kind: str | None) -> bool:
    """Whether the actor and the rollouts hold GPUs (then the weight group uses NCCL):
    from the plan when this run placed them, else from this host."""
    if plan is not None and kind == "cuda":
        placed = [s for s in plan.services if s.role in ("actor", "rollout")
                  and s.pool != "external"]
        if placed and all(s.devices_per_rank for s in placed):
            return True
    if plan is not None and kind == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


class PPOServices:
    """Places and starts (or connects to) every role the config needs; a context manager.

    The launcher realises the placement plan (`placement.json` in the run directory) and
    reports addresses; everything after that talks gRPC to those addresses.
    """

    def __init__(self, cfg: PPOJobConfig, run_dir: str | Path,
                 start_timeout_s: float = 600.0, call_timeout_s: float = 3600.0,
                 longest_prompt: int | None = None,
                 threads: dict[str, dict[str, int]] | None = None) -> None:
        self.cfg = cfg
        self.longest_prompt = longest_prompt
        """Tokens of the run's longest prompt: sizes the rollouts' CPU KV cache."""
        self.run_dir = Path(run_dir)
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        # The cluster token: the one configured (QUARTET_AUTH_TOKEN_FILE), else a fresh one
        # for this run that every service started here requires (restarted ones too).
        token_file = os.environ.get(TOKEN_ENV) or str(write_token(self.run_dir / "auth-token"))
        self.security = ClientSecurity.from_env(token_file)
        self.launcher = make_launcher(cfg, self.run_dir / "logs", self.service_args(),
                                      env={TOKEN_ENV: token_file})
        self.threads = threads or thread_plan(cfg)
        """Compute threads per local role and phase (default: `thread_plan`)."""
        self.placement: PlacementPlan | None = None
        self.addresses: dict[str, list[str]] = {}
        self.replica_names: dict[str, str] = {}
        self.sync: WeightSync | None = None
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

    # ---------------------------------------------------------------- starting
    def start(self) -> None:
        started = time.perf_counter()
        if self.registry is not None:
            self.addresses = self._discover()
            log.info("discovered from %s: %s", self.cfg.cluster.registry, self.addresses)
            return
        kind, per_node = self.launcher.resources()
        plan = ppo_placement(self.cfg, per_node, kind)
        log.info("%s", plan.table())
        kv_bytes = rollout_kv_cache_bytes(self.cfg, self.longest_prompt, kind == "cuda")
        if self.cfg.ray.address is None:  # every service runs on this host
            check_budget(ppo_budget(self.cfg, critic_model(self.cfg)[0], kv_bytes))
        commands = service_commands(self.cfg, kind, self.threads,
                                    save_root(self.cfg, self.run_dir), kv_bytes,
                                    rollout_max_model_len(self.cfg, self.longest_prompt))
        self.placement = plan = self.launcher.launch(plan, commands, self.start_timeout_s)
        plan.write(self.run_dir / "placement.json")
        self.addresses = {role: [s.address for s in plan.of_role(role)]
                          for role in ("actor", "critic", "reference", "reward", "rollout")}
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
        sync: WeightSync
        kind = self.placement.device_kind if self.placement else None
        dtype = cfg.vllm.engine_dtype(on_gpus(self.placement, kind))
        if backend == "grpc" or (backend == "auto" and self.registry is not None):
            sync = StreamedWeightSync(actor, rollout_clients, dtype, run_id=run_id)
        else:
            if backend == "auto":
                backend = "nccl" if on_gpus(self.placement, kind) else "gloo"
            master = cfg.vllm.sync_master_address or (
                cfg.actor.address.rsplit(":", 1)[0] if cfg.actor.address else "")
            sync = GroupWeightSync(
                actor, rollout_clients, backend, dtype, cfg.vllm.sync_bucket_mb << 20,
                master_address=master,
                workers_per_replica=cfg.vllm.tensor_parallel_size, run_id=run_id,
                shared_memory=cfg.vllm.sync_shared_memory)
        sync.setup()
        self.sync = sync
        if not all(sync.serves(c.info(), 0) for c in rollout_clients):
            # Replicas that served an earlier run hold its last weights: the run starts by
            # giving them the actor's current weights as its first version.
            log.info("rollout replicas served an earlier run; syncing the actor's weights as "
                     "version 0 of run %s", run_id)
            sync(0)
        replicas = [RolloutReplica(c, t, self.replica_names.get(c.address, ""), sync.versions)
                    for c in rollout_clients]
        reference = (GrpcReferenceClient(a["reference"][0], timeout_s=t, security=sec)
                     if a["reference"] else None)
        return PPORoles(
            actor=actor,
            rollouts=replicas,
            rewards=rewards,
            reward_weights=weights,
            reference=reference,
            critic=critic,
            sync_weights=sync,
            # not where the replicas free their memory while the actor trains: an early
            # update would bring it back during training
            early_sync=sync if isinstance(sync, GroupWeightSync) and not (
                cfg.vllm.enable_sleep or cfg.train.colocate_all_models) else None,
            refresh_rollouts=self.membership(replicas, sync) if self.registry else None,
            # The replicas the next update reaches: released ones must get every weight back
            # (joined ones included, departed and retired ones not).
            release_memory=PhaseMemory(
                (lambda: sync.rollouts) if cfg.vllm.enable_sleep else [],
                reference if cfg.ref.enable_sleep else None, run_id)
            if cfg.vllm.enable_sleep or cfg.ref.enable_sleep else None,
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
                GrpcRolloutClient(rec.address, security=self.security), t, rec.replica,
                sync.versions),
            catch_up=lambda replica, version: sync.catch_up(replica.client, version),
            on_change=lambda current: sync.set_rollouts([r.client for r in current]))

    def recovery(self) -> RoleRecovery | None:
        """Restarts of the role processes started here (--restart.*); services given by
        address are someone else's to restart. Call after roles()."""
        if self.cfg.restart.max_restarts == 0:
            return None
        policy = RestartPolicy(self.cfg.restart.max_restarts,
                               self.cfg.restart.min_rollout_replicas, self.start_timeout_s)
        return RoleRecovery(self.launcher.supervisor, policy, self.sync)

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.close()
        codes = self.launcher.stop()
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
