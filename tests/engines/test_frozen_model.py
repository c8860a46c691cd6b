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


ZERO3_LOAD = """
import sys
from transformers import AutoModelForSequenceClassification
from transformers.integrations import is_deepspeed_zero3_enabled
from quartet.engines.frozen_model import FrozenHost

host = FrozenHost("bfloat16", zero_stage=3)
module = host.load(AutoModelForSequenceClassification, sys.argv[1], num_labels=1)
params = list(module.parameters())
print(all(hasattr(p, "ds_id") for p in params), {str(p.dtype) for p in params},
      sum(p.numel() for p in params), sum(p.ds_numel for p in params),
      is_deepspeed_zero3_enabled())
"""


def test_zero3_frozen_models_are_partitioned_as_they_load(tiny_model_path):
    """Under ZeRO-3 no rank builds the whole model first: every parameter is a partitioned
    one (`ds_id`, empty locally) straight out of `from_pretrained`, in the dtype asked; and
    the ZeRO-3 switch transformers reads is off again afterwards. A fresh process: this
    joins a (one-rank) process group."""
    import os
    import subprocess
    import sys

    from quartet.launch.local import DIST_ENV

    # a world of its own, whatever process group this pytest process may have joined
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    out = subprocess.run([sys.executable, "-c", ZERO3_LOAD, str(tiny_model_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # partitioned, dtypes, local elements, elements in all, ZeRO-3 switch still on
    fields = out.stdout.strip().splitlines()[-1]
    assert fields.startswith("True {'torch.bfloat16'} 0 "), fields
    assert int(fields.split()[-2]) > 100_000 and fields.endswith(" False"), fields
