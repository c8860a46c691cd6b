"""The rollouts' CPU KV cache sized from the run's bounds (`quartet.launch.kv_cache`)."""

import json

import pytest

from quartet.config.base import parse_config
from quartet.launch.kv_cache import CPU_BLOCK_TOKENS, KVShape, kv_cache_bytes, kv_shape
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import service_commands, thread_plan
from services.coordinator.memory_budget import ppo_budget, rollout_kv_cache_bytes

# SmolLM2-135M's attention sizes (its config.json)
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "hidden_size": 576, "max_position_embeddings": 8192}


@pytest.fixture
def smollm2_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    return tmp_path


def test_bytes_per_token_match_what_vllm_reported_for_smollm2(smollm2_dir):
    shape = kv_shape(smollm2_dir)
    assert shape == KVShape(30, 3, 64, 8192)
    # vLLM's log for a 1 GiB fp32 cache of SmolLM2-135M: "CPU KV cache size: 23,296 tokens"
    per_token = shape.bytes_per_token(4)
    assert (1 << 30) // (per_token * CPU_BLOCK_TOKENS) * CPU_BLOCK_TOKENS == 23_296


def test_head_dim_defaults_to_hidden_over_heads_and_unknown_models_give_none(tmp_path):
    cfg = {k: v for k, v in SMOLLM2.items() if k not in ("head_dim", "num_key_value_heads")}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert kv_shape(tmp_path) == KVShape(30, 9, 64, 8192)
    assert kv_shape(tmp_path / "missing") is None
    assert kv_shape("HuggingFaceTB/SmolLM2-135M") is None  # a hub id: not read


def test_rows_round_up_to_blocks_and_one_full_context_request_always_fits():
    shape = KVShape(2, 1, 8, 1024)
    per_block = CPU_BLOCK_TOKENS * shape.bytes_per_token(4)
    # 64 rows of 92 tokens: one block each, + the null block
    assert kv_cache_bytes(shape, 4, 64, 92) == 65 * per_block
    # 129 tokens take two blocks a row
    assert kv_cache_bytes(shape, 4, 64, 129) == 129 * per_block
    # one row: the 1024-token context (8 blocks) binds, or an explicit max_model_len
    assert kv_cache_bytes(shape, 4, 1, 92) == 9 * per_block
    assert kv_cache_bytes(shape, 4, 1, 92, max_model_len=4096) == 33 * per_block
    with pytest.raises(ValueError, match="rows"):
        kv_cache_bytes(shape, 4, 0, 92)


def _cfg(model, *extra):
    return parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(model), "--data.dataset", "d.jsonl",
        "--reward.func", "r.py", "--rollout.batch_size", "16",
        "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "32", *extra])


def test_the_grpo_bench_run_gets_a_third_of_the_old_fixed_gibibyte(smollm2_dir):
    cfg = _cfg(smollm2_dir)
    kv = rollout_kv_cache_bytes(cfg, longest_prompt=60, on_gpu=False)
    # 64 rows x 1 block = the 8192-token context's 64 blocks, + 1: 65 x 128 x 46080 B
    assert kv == 65 * 128 * 46080
    assert kv < (1 << 30) * 0.4
    cmds = service_commands(cfg, "cpu", thread_plan(cfg, cores=2), kv_cache_bytes=kv)
    args = list(cmds["rollout0"].args)
    assert args[args.index("--kv-cache-bytes") + 1] == str(kv)
    assert ppo_budget(cfg, str(smollm2_dir), kv)["rollout0"] < ppo_budget(
        cfg, str(smollm2_dir))["rollout0"]


def test_engines_split_the_rows_and_the_flag_or_a_gpu_override_the_sizing(smollm2_dir):
    two = _cfg(smollm2_dir, "--vllm.num_engines", "2", "--rollout.max_new_tokens", "200")
    # 32 rows per engine x 3 blocks (60 + 200 tokens) = 96 blocks, + 1
    assert rollout_kv_cache_bytes(two, 60, on_gpu=False) == 97 * 128 * 46080
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir, "--vllm.kv_cache_mb", "300"), 60,
                                  on_gpu=False) == 300 << 20
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir), 60, on_gpu=True) is None
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir), None, on_gpu=False) is None
    cmds = service_commands(_cfg(smollm2_dir), "cpu", thread_plan(_cfg(smollm2_dir), cores=2))
    assert "--kv-cache-bytes" not in cmds["rollout0"].args  # None: the engine's default
