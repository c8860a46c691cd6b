"""The n samples of a prompt share its prefill in vLLM's prefix cache (CPU engines use 32-token
blocks for it), and sharing changes nothing that is sampled: each seeded sample draws the same
tokens as when its prompt is computed from scratch."""

from __future__ import annotations

import random

import pytest
import torch

from quartet.types import SamplingConfig

BLOCK = 32


def test_samples_of_a_prompt_reuse_its_blocks_and_draw_the_same_tokens(vllm_generator):
    from quartet.launch.kv_cache import CPU_BLOCK_TOKENS

    if torch.cuda.is_available():
        pytest.skip("the block size is set for CPU engines")
    assert CPU_BLOCK_TOKENS == BLOCK
    g = vllm_generator
    rng = random.Random(7)
    # 2 full blocks and a partial one; ids of this test only, so no earlier call cached them.
    prompt = [1] + [rng.randrange(10, g.vocab_size) for _ in range(2 * BLOCK + 5)]
    n, seed = 4, 1234
    sampling = SamplingConfig(n=n, temperature=1.0, max_new_tokens=12, seed=seed, logprobs=True)
    g.reset_prefix_cache()
    before = g.cached_prompt_tokens
    shared = g.generate([prompt], sampling).collect()[0].samples
    # The first sample computes the prompt; the other n-1 take its 2 full blocks.
    assert g.cached_prompt_tokens - before == (n - 1) * 2 * BLOCK
    assert len({tuple(s.token_ids) for s in shared}) > 1  # distinct seeds, distinct samples

    for k, sample in enumerate(shared):
        g.reset_prefix_cache()
        before = g.cached_prompt_tokens
        alone = g.generate([prompt], SamplingConfig(
            n=1, temperature=1.0, max_new_tokens=12, seed=sampling.sample_seed(0, k),
            logprobs=True)).collect()[0].samples[0]
        assert g.cached_prompt_tokens == before  # computed from scratch
        assert alone.token_ids == sample.token_ids, k
        assert alone.logprobs == pytest.approx(sample.logprobs, abs=1e-4)


def test_the_engine_runs_the_rows_in_flight_the_kv_sizing_counts_on(vllm_generator):
    from quartet.launch.kv_cache import CPU_MAX_ROWS

    if torch.cuda.is_available():
        pytest.skip("the rows in flight are set for CPU engines")
    sched = vllm_generator._engine.vllm_config.scheduler_config
    assert sched.max_num_seqs == CPU_MAX_ROWS
