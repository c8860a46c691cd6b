"""How `quartet ppo` sizes each local service's compute threads (`thread_plan`)."""

from quartet.config.base import parse_config
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import service_commands, thread_plan

BASE = ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--reward.func", "r.py"]


def test_rollout_engines_get_the_cores_of_the_generate_phase():
    cfg = parse_config(PPOJobConfig, BASE)
    cmds = service_commands(cfg, "cpu", thread_plan(cfg, cores=2))
    # Synchronous GRPO: nothing else computes while the engine generates.
    assert cmds["rollout0"].env["OMP_NUM_THREADS"] == "2"
    two = parse_config(PPOJobConfig, [*BASE, "--vllm.num_engines", "2"])
    cmds = service_commands(two, "cpu", thread_plan(two, cores=4))
    assert [cmds[f"rollout{i}"].env["OMP_NUM_THREADS"] for i in range(2)] == ["2", "2"]
    overlapped = parse_config(PPOJobConfig, [*BASE, "--train.async_enable"])
    cmds = service_commands(overlapped, "cpu", thread_plan(overlapped, cores=4))
    assert cmds["rollout0"].env["OMP_NUM_THREADS"] == "1"
