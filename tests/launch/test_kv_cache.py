"""The rollouts' CPU KV cache sized from the run's bounds (`quartet.launch.kv_cache`)."""

import json

import pytest

from quartet.config.base import parse_config
from quartet.launch.kv_cache import (
    CPU_BLOCK_TOKENS,
    CPU_MAX_ROWS,
    KVShape,
    group_blocks,
    kv_cache_bytes,
    kv_shape,
    run_context_len,
)
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import service_commands, thread_plan
from services.coordinator.memory_budget import (
    ppo_budget,
    rollout_kv_cache_bytes,
    rollout_max_model_len,
)

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


def test_the_engine_uses_the_block_the_sizing_counts():
    from quartet.engines.generation import vllm_generator

    assert CPU_BLOCK_TOKENS == 32
    assert not hasattr(vllm_generator, "CPU_BLOCK_SIZE")  # one constant, in kv_cache


def test_rows_round_up_to_blocks_and_one_full_context_request_always_fits():
    shape = KVShape(2, 1, 8, 1024)
    per_block = CPU_BLOCK_TOKENS * shape.bytes_per_token(4)
    # 64 single-sample rows of 60 + 32 tokens: 3 blocks of 32 each, + the null block
    assert kv_cache_bytes(shape, 4, 64, 1, 60, 32) == 193 * per_block
    # 97 tokens take four blocks a row
    assert kv_cache_bytes(shape, 4, 64, 1, 65, 32) == 257 * per_block
    # one row: the 1024-token context (32 blocks) binds, or an explicit max_model_len
    assert kv_cache_bytes(shape, 4, 1, 1, 60, 32) == 33 * per_block
    assert kv_cache_bytes(shape, 4, 1, 1, 60, 32, max_model_len=4096) == 129 * per_block
    # the run's own context: 92 tokens -> 96, three blocks, never above the rows' own
    assert run_context_len(60, 32) == 96 and run_context_len(64, 32) == 96
    assert run_context_len(65, 32) == 128
    assert kv_cache_bytes(shape, 4, 1, 1, 60, 32, max_model_len=run_context_len(60, 32)) == (
        4 * per_block)
    with pytest.raises(ValueError, match="longest_prompt"):
        run_context_len(0, 32)
    with pytest.raises(ValueError, match="prompts"):
        kv_cache_bytes(shape, 4, 0, 1, 60, 32)
    with pytest.raises(ValueError, match="samples"):
        group_blocks(0, 60, 32)


def test_a_prompts_samples_share_its_full_blocks_but_never_its_last_token():
    # 4 samples of a 60-token prompt: 3 blocks each, the first block (tokens 0-31) shared
    assert group_blocks(4, 60, 32) == 4 * 3 - 3
    # prompts of whole blocks share one block less: the hit stops before the last token
    assert group_blocks(4, 32, 32) == 4 * 2  # shares nothing, 2 blocks each
    assert group_blocks(4, 64, 1) == 4 * 3 - 3 * 1
    # not monotone in the prompt's length: 32 tokens shares nothing (8 blocks), 33 shares
    # one but decodes into a third block (9); the worst length up to the longest counts
    assert [group_blocks(4, p, 32) for p in (31, 32, 33)] == [8, 8, 9]
    assert group_blocks(4, 40, 32) == 9 and group_blocks(2, 40, 32) == 5
    # one sample shares with nobody
    assert group_blocks(1, 60, 32) == 3
    # brute force over a small grid: the worst prompt length, never less than any one
    for n in (1, 2, 4, 8):
        for longest in (1, 31, 32, 33, 63, 64, 65, 100):
            for new in (1, 16, 32, 33):
                worst = max(n * -(-(p + new) // 32) - (n - 1) * ((p - 1) // 32)
                            for p in range(1, longest + 1))
                assert group_blocks(n, longest, new) == worst


def _cfg(model, *extra):
    return parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(model), "--data.dataset", "d.jsonl",
        "--reward.func", "r.py", "--rollout.batch_size", "16",
        "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "32", *extra])


def test_the_grpo_bench_run_gets_a_quarter_of_the_old_fixed_gibibyte(smollm2_dir):
    cfg = _cfg(smollm2_dir)
    kv = rollout_kv_cache_bytes(cfg, longest_prompt=60, on_gpu=False)
    # 16 prompts x (4 samples x 3 blocks of 32 (60 + 32 tokens) - the 3 prompt blocks
    # samples 2..4 share), + 1; the run's 96-token context, not the model's 8192 (256
    # blocks), is the one-request floor: 145 x 32 x 46080 B (193 counting no sharing)
    assert kv == 145 * 32 * 46080
    assert kv < (1 << 30) * 0.2
    context = rollout_max_model_len(cfg, longest_prompt=60)
    assert context == 96
    cmds = service_commands(cfg, "cpu", thread_plan(cfg, cores=2), kv_cache_bytes=kv,
                            run_context=context)
    args = list(cmds["rollout0"].args)
    assert args[args.index("--kv-cache-bytes") + 1] == str(kv)
    assert args[args.index("--max-model-len") + 1] == "96" and "--strict-context" in args
    assert ppo_budget(cfg, str(smollm2_dir), kv)["rollout0"] < ppo_budget(
        cfg, str(smollm2_dir))["rollout0"]


def test_no_more_blocks_than_the_rows_in_flight_hold(smollm2_dir):
    # the engine runs 64 rows at once, each at most 3 blocks (60 + 32 tokens), sharing none
    assert CPU_MAX_ROWS == 64
    # 64 prompts x 4 samples (the bench's --prompts 64): 576 blocks by prompts, 192 in flight
    big = _cfg(smollm2_dir, "--rollout.batch_size", "64")
    assert rollout_kv_cache_bytes(big, 60, on_gpu=False) == (64 * 3 + 1) * 32 * 46080
    # 32 prompts (128 rows): 289 by prompts, 192 in flight
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir, "--rollout.batch_size", "32"), 60,
                                  on_gpu=False) == (64 * 3 + 1) * 32 * 46080
    # 16 prompts (the default shape, 64 rows): sharing within groups binds first, as before
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir), 60, on_gpu=False) == (
        16 * 9 + 1) * 32 * 46080
    shape = KVShape(2, 1, 8, 1024)
    per_block = CPU_BLOCK_TOKENS * shape.bytes_per_token(4)
    # fewer rows in flight, fewer blocks; the one-request floor still holds
    assert kv_cache_bytes(shape, 4, 64, 4, 60, 32, max_model_len=96, max_rows=8) == (
        8 * 3 + 1) * per_block
    assert kv_cache_bytes(shape, 4, 64, 4, 60, 32, max_rows=1) == 33 * per_block
    with pytest.raises(ValueError, match="max_rows"):
        kv_cache_bytes(shape, 4, 1, 1, 60, 32, max_rows=0)


def test_engines_split_the_rows_and_the_flag_or_a_gpu_override_the_sizing(smollm2_dir):
    two = _cfg(smollm2_dir, "--vllm.num_engines", "2", "--rollout.max_new_tokens", "200")
    # 8 prompts per engine x (4 x 9 blocks (60 + 200 tokens) - 3 shared) = 264 blocks, + 1
    assert rollout_kv_cache_bytes(two, 60, on_gpu=False) == 265 * 32 * 46080
    # an odd count of prompts: the larger shard sizes both engines
    odd = _cfg(smollm2_dir, "--vllm.num_engines", "2", "--rollout.batch_size", "15",
               "--train.batch_size", "60", "--train.micro_batch_size", "4")
    assert rollout_kv_cache_bytes(odd, 60, on_gpu=False) == (8 * 9 + 1) * 32 * 46080
    # a context the user set is passed as is and not enforced; unknown prompts: the model's
    user = _cfg(smollm2_dir, "--vllm.max_model_len", "1024")
    assert rollout_max_model_len(user, 60) == 1024
    assert rollout_kv_cache_bytes(user, 60, on_gpu=False) == 145 * 32 * 46080
    args = service_commands(user, "cpu", thread_plan(user, cores=2), run_context=1024)[
        "rollout0"].args
    assert args[args.index("--max-model-len") + 1] == "1024" and "--strict-context" not in args
    assert rollout_max_model_len(_cfg(smollm2_dir), None) is None
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir, "--vllm.kv_cache_mb", "300"), 60,
                                  on_gpu=False) == 300 << 20
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir), 60, on_gpu=True) is None
    assert rollout_kv_cache_bytes(_cfg(smollm2_dir), None, on_gpu=False) is None
    cmds = service_commands(_cfg(smollm2_dir), "cpu", thread_plan(_cfg(smollm2_dir), cores=2))
    assert "--kv-cache-bytes" not in cmds["rollout0"].args  # None: the engine's default
