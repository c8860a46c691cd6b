"""Frozen models (reference, reward model) load straight into the configured dtype."""

import pytest
import torch

from quartet.codec import RowBatch


def test_reference_loads_in_bf16_and_scores_like_fp32(tiny_model_path):
    from quartet.engines.frozen_model import FrozenCausalLM

    batch = RowBatch([torch.tensor([1, 50, 60, 70, 80]), torch.tensor([1, 9, 10])], [2, 1])
    fp32 = FrozenCausalLM(str(tiny_model_path), "float32")
    bf16 = FrozenCausalLM(str(tiny_model_path), "bfloat16")
    assert {p.dtype for p in bf16.engine.module.parameters()} == {torch.bfloat16}
    for a, b in zip(fp32.logprobs(batch).logprobs, bf16.logprobs(batch).logprobs, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, atol=0.1)


def test_reward_model_loads_in_the_given_dtype(tiny_model_path):
    from quartet.rewards.base import RewardInputs
    from quartet.rewards.model import SequenceRegressionReward

    reward = SequenceRegressionReward(str(tiny_model_path), "bfloat16", offload=True)
    assert {p.dtype for p in reward.engine.module.parameters()} == {torch.bfloat16}
    assert not reward.engine.offload  # offload is for accelerators; a no-op on CPU
    out = reward(RewardInputs(queries=["a b c", "d e"], prompts=["a", "d"],
                              responses=["b c", "e"], labels=["", ""]))
    assert len(out.rewards) == 2 and all(isinstance(r, float) for r in out.rewards)


def test_unknown_dtype_names_the_field(tiny_model_path):
    from quartet.engines.frozen_model import FrozenCausalLM

    with pytest.raises(ValueError, match="dtype: must be one of float32, bfloat16, float16"):
        FrozenCausalLM(str(tiny_model_path), "int8")
