"""The memory budget of a `quartet ppo` job's local roles (`quartet.launch.memory`)."""

from __future__ import annotations

import math

from quartet.engines.generation.vllm_generator import DEFAULT_CPU_KV_CACHE_BYTES
from quartet.launch.kv_cache import kv_cache_bytes, kv_shape, run_context_len
from quartet.launch.memory import (
    DTYPE_BYTES,
    model_shape,
    rollout_bytes,
    scorer_bytes,
    trainer_bytes,
)
from services.coordinator.config import PPOJobConfig


def ranks_of(num_nodes: int, num_gpus_per_node: int) -> int:
    """A role's rank processes (a role asking for no device still runs one)."""
    return max(num_nodes * num_gpus_per_node, 1)


def rollout_max_model_len(cfg: PPOJobConfig, longest_prompt: int | None) -> int | None:
    """The context of each locally started rollout engine: --vllm.max_model_len, else the
    run's longest prompt (tokens) + --rollout.max_new_tokens rounded up to whole KV blocks
    (`run_context_len`) when the prompts are known, else None (the model's)."""
    if cfg.vllm.max_model_len:
        return cfg.vllm.max_model_len
    if longest_prompt is None:
        return None
    return run_context_len(longest_prompt, cfg.rollout.max_new_tokens)


def rollout_kv_cache_bytes(cfg: PPOJobConfig, longest_prompt: int | None,
                           on_gpu: bool) -> int | None:
    """The KV cache each locally started vLLM engine gets on CPU: --vllm.kv_cache_mb, else
    sized from the run (`quartet.launch.kv_cache`) when the longest prompt (tokens) and the
    model's attention sizes are known, else None (the engine's 1 GiB default). None on GPU,
    where --vllm.gpu_memory_utilization sizes it."""
    v = cfg.vllm
    if on_gpu:
        return None
    if v.kv_cache_mb is not None:
        return v.kv_cache_mb << 20
    shape = kv_shape(cfg.actor.model_name_or_path)
    if longest_prompt is None or shape is None:
        return None
    # the coordinator gives each engine whole prompts, in contiguous shards
    prompts = math.ceil(cfg.rollout.batch_size / v.num_engines)
    return kv_cache_bytes(shape, DTYPE_BYTES[v.engine_dtype(False)], prompts,
                          cfg.rollout.n_samples_per_prompt, longest_prompt,
                          cfg.rollout.max_new_tokens, rollout_max_model_len(cfg, longest_prompt))


def ppo_budget(cfg: PPOJobConfig, critic_model: str,
               kv_bytes: int | None = None) -> dict[str, int]:
    """Estimated bytes per role started locally (roles with an address run elsewhere).
    The frozen roles count every rank; the trainers are one rank's estimate still.
    `kv_bytes`: each rollout engine's KV cache (`rollout_kv_cache_bytes`; None: 1 GiB)."""
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
                                               kv_bytes or DEFAULT_CPU_KV_CACHE_BYTES)
    return out
