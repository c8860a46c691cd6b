"""The placement plan: per-role device flags and colocation, computed without Ray."""

from __future__ import annotations

import pytest

from quartet.config.base import ConfigError, parse_config_or_raise
from quartet.launch.launcher import device_env
from quartet.launch.placement import (
    PlacementError,
    ServiceDemand,
    load_placement,
    plan_placement,
)
from services.coordinator.config import PPOJobConfig
from services.coordinator.placement import ppo_placement

# The seed paper's Listing 1 (70B PPO on 16 A100s) in quartet's hierarchical flags.
LISTING_1 = [
    "--ref.num_gpus_per_node", "4", "--reward.num_gpus_per_node", "4",
    "--critic.num_gpus_per_node", "4", "--actor.num_gpus_per_node", "4",
    "--vllm.num_engines", "4", "--vllm.tensor_parallel_size", "2", "--vllm.backend", "vllm",
    "--train.colocate_actor_ref", "--train.colocate_critic_reward", "--ref.offload",
    "--reward.offload",
    "--actor.model_name_or_path", "sft-70b", "--reward.model_name_or_path", "rm-70b",
    "--ds.zero_stage", "3", "--ds.param_dtype", "bf16", "--algo.kl.init_coef", "0.01",
    "--data.dataset", "prompts", "--data.input_key", "prompt", "--reward.normalize_enable",
    "--ds.adam_offload", "--ds.attn_implementation", "flash_attention_2",
    "--ckpt.output_dir", "out",
]


def slots(service: dict) -> list[tuple[str, int]]:
    return [(r["node"], d) for r in service["ranks"] for d in r["devices"]]


def test_listing_1_places_16_gpus_on_two_nodes_with_colocated_pairs(tmp_path):
    cfg = parse_config_or_raise(PPOJobConfig, LISTING_1)
    path = ppo_placement(cfg, devices_per_node=8, device_kind="cuda").write(
        tmp_path / "placement.json")
    p = load_placement(path)["services"]
    assert sorted(p) == ["actor", "critic", "reference", "reward0",
                         "rollout0", "rollout1", "rollout2", "rollout3"]
    for name in ("actor", "critic", "reference", "reward0"):  # one rank per GPU
        assert p[name]["world_size"] == 4 and len(slots(p[name])) == 4, name
        assert all(len(r["devices"]) == 1 for r in p[name]["ranks"])
    # colocated pairs share exactly the same devices, each with half of every one
    assert slots(p["actor"]) == slots(p["reference"])
    assert slots(p["critic"]) == slots(p["reward0"])
    assert p["actor"]["gpu_fraction"] == p["critic"]["gpu_fraction"] == 0.5
    assert p["actor"]["colocated_with"] == ["reference"]
    # four engines of TP 2: one rank (process) with two GPUs each
    for i in range(4):
        engine = p[f"rollout{i}"]
        assert engine["world_size"] == 1 and len(engine["ranks"][0]["devices"]) == 2
        assert engine["gpu_fraction"] == 1.0
    # 16 distinct GPUs in all, 8 per node; nothing else overlaps
    groups = [slots(p["actor"]), slots(p["critic"])] + [slots(p[f"rollout{i}"])
                                                        for i in range(4)]
    every = [s for g in groups for s in g]
    assert len(every) == len(set(every)) == 16
    assert {n for n, _ in every} == {"node0", "node1"}
    assert all(0 <= d < 8 for _, d in every)


def test_colocate_all_models_shares_one_pool_and_splits_it_among_engines():
    cfg = parse_config_or_raise(PPOJobConfig, [
        "--actor.model_name_or_path", "m", "--data.dataset", "d", "--reward.model_name_or_path",
        "rm", "--actor.num_gpus_per_node", "4", "--critic.num_gpus_per_node", "4",
        "--ref.num_gpus_per_node", "4", "--reward.num_gpus_per_node", "4",
        "--vllm.num_engines", "2", "--vllm.tensor_parallel_size", "2",
        "--vllm.backend", "vllm", "--train.colocate_all_models"])
    plan = ppo_placement(cfg, devices_per_node=8, device_kind="cuda")
    assert len(plan.pools) == 1 and plan.num_nodes == 1
    actor = plan.service("actor")
    assert [r.devices for r in actor.ranks] == [(0,), (1,), (2,), (3,)]
    assert plan.service("rollout0").ranks[0].devices == (0, 1)
    assert plan.service("rollout1").ranks[0].devices == (2, 3)
    assert actor.gpu_fraction == pytest.approx(0.2)


def test_separate_roles_get_their_own_devices_and_env():
    plan = plan_placement([ServiceDemand("actor", "actor", 1, 2),
                           ServiceDemand("critic", "critic", 1, 2),
                           ServiceDemand("reward0", "reward", 1, 0),
                           ServiceDemand("rollout0", "rollout", 1, 1)], device_kind="cuda")
    actor, critic = plan.service("actor"), plan.service("critic")
    assert [r.devices for r in actor.ranks] == [(0,), (1,)]
    assert [r.devices for r in critic.ranks] == [(2,), (3,)]
    assert plan.service("reward0").ranks[0].devices == ()
    assert plan.service("rollout0").ranks[0].devices == (4,)
    env = device_env(critic, critic.ranks[1], "cuda")
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    rollout = plan.service("rollout0")
    assert device_env(rollout, rollout.ranks[0], "cuda") == {"CUDA_VISIBLE_DEVICES": "4"}
    assert device_env(rollout, rollout.ranks[0], "cpu") == {}


def test_a_role_spanning_two_nodes_takes_one_chunk_per_node():
    plan = plan_placement([ServiceDemand("actor", "actor", 2, 4)], devices_per_node=4)
    assert plan.num_nodes == 2
    ranks = plan.service("actor").ranks
    assert [(r.node, r.devices, r.local_rank) for r in ranks] == [
        ("node0", (0,), 0), ("node0", (1,), 1), ("node0", (2,), 2), ("node0", (3,), 3),
        ("node1", (0,), 0), ("node1", (1,), 1), ("node1", (2,), 2), ("node1", (3,), 3)]


@pytest.mark.parametrize("flags, field", [
    (["--train.colocate_actor_ref", "--ref.num_gpus_per_node", "2"],
     "--train.colocate_actor_ref"),
    (["--train.colocate_all_models", "--vllm.num_engines", "3"],
     "--train.colocate_all_models"),
    (["--actor.num_nodes", "0"], "--actor.num_nodes"),
    (["--vllm.tensor_parallel_size", "2", "--vllm.backend", "hf"],
     "--vllm.tensor_parallel_size"),
    (["--ray.address", "auto"], "--ray.address"),
    (["--reward.num_nodes", "0", "--reward.model_name_or_path", "rm"], "--reward.num_nodes"),
])
def test_impossible_placements_are_refused_at_parse_time(flags, field):
    with pytest.raises(ConfigError) as info:
        parse_config_or_raise(PPOJobConfig, ["--actor.model_name_or_path", "m",
                                             "--data.dataset", "d", "--reward.func", "f.py",
                                             *flags])
    assert f"{field}: " in str(info.value)


def test_reward_model_ranks_follow_the_reward_flags_and_rule_rewards_take_none():
    cfg = parse_config_or_raise(PPOJobConfig, [
        "--actor.model_name_or_path", "m", "--data.dataset", "d",
        "--reward.model_name_or_path", "rm", "--reward.func", "f.py",
        "--reward.num_nodes", "2", "--reward.num_gpus_per_node", "2"])
    plan = ppo_placement(cfg, devices_per_node=2, device_kind="cuda")
    model, rule = plan.service("reward0"), plan.service("reward1")
    assert model.world_size == 4
    nodes = [r.node for r in model.ranks]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]  # 2 nodes of 2 ranks each
    assert [(r.devices, r.local_rank) for r in model.ranks] == [((0,), 0), ((1,), 1)] * 2
    assert rule.world_size == 1 and rule.ranks[0].devices == ()


def test_a_pool_larger_than_a_node_is_refused():
    with pytest.raises(PlacementError, match="needs 8 devices on one node"):
        plan_placement([ServiceDemand("actor", "actor", 1, 8)], devices_per_node=4)
