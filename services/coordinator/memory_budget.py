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


def ppo_budget(cfg: PPOJobConfig, critic_model: str) -> dict[str, int]:
    """Estimated bytes per role started locally (roles with an address run elsewhere)."""
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
    if cfg.needs_reference and not cfg.ref.address:
        ref = model_shape(cfg.ref.model_name_or_path or cfg.actor.model_name_or_path)
        if ref is not None:
            out["reference"] = scorer_bytes(ref, "float32", 8, seq, seq)
    for i, path in enumerate(cfg.reward.model_name_or_path):
        m = model_shape(path)
        if m is not None:
            out[f"reward{i}"] = scorer_bytes(m, "float32", 8, seq, 1)
    if actor is not None and not cfg.vllm.address:
        for i in range(cfg.vllm.num_engines):
            out[f"rollout{i}"] = rollout_bytes(actor, cfg.vllm.dtype,
                                               DEFAULT_CPU_KV_CACHE_BYTES)
    return out
