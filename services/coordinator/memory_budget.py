"""The memory budget of a `quartet ppo` job's local roles (`quartet.launch.memory`)."""

from __future__ import annotations

from quartet.engines.generation.vllm_generator import DEFAULT_CPU_KV_CACHE_BYTES
from quartet.launch.memory import (
    model_shape,
    rollout_bytes,
    scorer_bytes,
    trainer_bytes,
)
from services.coordinator.config import PPOJobConfig


def ranks_of(num_nodes: int, num_gpus_per_node: int) -> int:
    """A role's rank processes (a role asking for no device still runs one)."""
    return max(num_nodes * num_gpus_per_node, 1)


def ppo_budget(cfg: PPOJobConfig, critic_model: str) -> dict[str, int]:
    """Estimated bytes per role started locally (roles with an address run elsewhere).
    The frozen roles count every rank; the trainers are one rank's estimate still."""
    seq = cfg.rollout.prompt_max_len + cfg.rollout.max_new_tokens
    micro = cfg.train.micro_batch_size
    dtype = cfg.ds.param_dtype
    out: dict[str, int] = {}
    actor = model_shape(cfg.actor.model_name_or_path)
    if actor is not None and not cfg.actor.address:
        out["actor"] = trainer_bytes(actor, dtype, micro, seq, seq)
    if cfg.needs_critic and not cfg.critic.address:
        critic = model_shape(critic_model)
        if critic is not None:
            out["critic"] = trainer_bytes(critic, dtype, micro, seq, 1)
    # the frozen roles: in --ds.param_dtype, one process per rank, ZeRO-3 splits the weights
    sharded = cfg.ds.zero_stage == 3
    if cfg.needs_reference and not cfg.ref.address:
        ref = model_shape(cfg.ref.model_name_or_path or cfg.actor.model_name_or_path)
        if ref is not None:
            out["reference"] = scorer_bytes(ref, dtype, 8, seq, seq,
                                            ranks_of(cfg.ref.num_nodes, cfg.ref.num_gpus_per_node),
                                            sharded)
    rw = cfg.reward
    for i, path in enumerate(rw.model_name_or_path):
        m = model_shape(path)
        if m is not None:
            out[f"reward{i}"] = scorer_bytes(m, dtype, 8, seq, 1,
                                             ranks_of(rw.num_nodes, rw.num_gpus_per_node),
                                             sharded)
    if actor is not None and not cfg.vllm.address:
        for i in range(cfg.vllm.num_engines):
            out[f"rollout{i}"] = rollout_bytes(actor, cfg.vllm.dtype,
                                               DEFAULT_CPU_KV_CACHE_BYTES)
    return out
