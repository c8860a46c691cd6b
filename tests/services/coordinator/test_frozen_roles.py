"""How `quartet ppo` configures the frozen roles (reference, reward models)."""

import pytest

from quartet.config.base import parse_config
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import frozen_dtype, service_commands, thread_plan

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


@pytest.mark.parametrize("stage", [2, 3])
def test_reference_and_reward_models_get_dtype_offload_and_zero3_alike(stage):
    cfg = parse_config(PPOJobConfig, [
        *BASE, "--reward.model_name_or_path", "rm", "--reward.func", "r.py",
        "--algo.kl.init_coef", "0.01", "--ds.param_dtype", "bf16", "--ds.zero_stage",
        str(stage), "--ref.offload", "--reward.offload"])
    cmds = service_commands(cfg, "cpu", thread_plan(cfg, cores=2))
    want = ["--dtype", "bfloat16", "--offload"] + (["--zero-stage", "3"] if stage == 3 else [])
    for name in ("reference", "reward0"):
        args = list(cmds[name].args)
        assert args[2:2 + len(want)] == want, (name, args)
    assert "--zero-stage" not in cmds["reward1"].args  # a rule reward holds no weights
