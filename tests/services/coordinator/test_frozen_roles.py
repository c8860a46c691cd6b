"""How `quartet ppo` configures the frozen roles (reference, reward models)."""

import pytest

from quartet.config.base import parse_config
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import frozen_dtype

BASE = ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl"]


@pytest.mark.parametrize("param_dtype, dtype", [("bf16", "bfloat16"), ("fp16", "float16"),
                                                 ("fp32", "float32")])
def test_frozen_roles_follow_the_trained_roles_precision(param_dtype, dtype):
    cfg = parse_config(PPOJobConfig, [*BASE, "--reward.func", "r.py",
                                      "--ds.param_dtype", param_dtype])
    assert frozen_dtype(cfg) == dtype


def test_reward_offload_needs_a_reward_model(capsys):
    with pytest.raises(SystemExit):
        parse_config(PPOJobConfig, [*BASE, "--reward.func", "r.py", "--reward.offload"])
    assert "--reward.offload" in capsys.readouterr().err
    cfg = parse_config(PPOJobConfig, [*BASE, "--reward.model_name_or_path", "rm",
                                      "--reward.offload"])
    assert cfg.reward.offload
