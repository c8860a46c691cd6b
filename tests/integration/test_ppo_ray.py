"""`quartet ppo --launcher ray` on a real local Ray instance: one the run starts itself, or
one already running that it joins with `--ray.address` (as a user's cluster).

The instance binds loopback on free ports, runs no dashboard, and is ended by its pid when
the run (or the test that started it) ends. Without GPUs every "GPU" bundle is one CPU
slot, so the placement (placement groups, colocated services sharing bundles with
fractional shares) is the one a GPU cluster would get.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from quartet.launch.ray_launcher import RAY_ENV, LocalRay
from quartet.testing import write_tiny_reward_model
from quartet.testing.commands import quartet_ppo_command

HERE = Path(__file__).resolve().parent
ITERATIONS = 3

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero_stage, colocate, cluster", [(2, True, False), (3, False, True)])
def test_gae_ppo_on_a_local_ray_instance(tmp_path, tiny_model_path, tiny_data, zero_stage,
                                         colocate, cluster):
    """Actor and critic of 2 ranks each, reference (2 ranks sharing the actor's slots when
    colocated), a rule reward, 2 rollout engines, 3 iterations. `cluster`: the run joins a
    running instance (`--ray.address`) and adds a reward model of 2 ZeRO-3 ranks."""
    out = tmp_path / "run"
    cmd = quartet_ppo_command(
        tiny_model_path, tiny_data["prompts"], HERE / "rewards" / "digit_reward.py",
        "--algo.kl.init_coef", "0.01",
        "--actor.num_gpus_per_node", "2", "--critic.num_gpus_per_node", "2",
        "--vllm.num_engines", "2", "--vllm.backend", "hf",
        "--rollout.batch_size", "8", "--rollout.max_new_tokens", "8",
        "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--train.num_iterations", str(ITERATIONS), "--ckpt.output_dir", str(out),
        "--lr_scheduler", "constant", "--ds.param_dtype", "fp32",
        "--ds.zero_stage", str(zero_stage), launcher="ray",
    )
    if colocate:
        cmd += ["--train.colocate_actor_ref", "--ref.num_gpus_per_node", "2"]
    head = None
    if cluster:
        cmd += ["--reward.model_name_or_path", str(write_tiny_reward_model(tmp_path / "rm")),
                "--reward.num_gpus_per_node", "2"]
        head = LocalRay(tmp_path / "head.log")
        head.wait_ready()
        cmd += ["--ray.address", head.address]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                env={**os.environ, **RAY_ENV})
        # a run that joined a cluster leaves it running
        assert head is None or head.process.poll() is None
    finally:
        if head is not None:
            head.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "placement (cpu" in result.stdout
    assert (out / "logs" / "ray.log").exists() != cluster  # started its own only without

    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == ITERATIONS
    assert all(m["actor/world_size"] == 2 and m["critic/world_size"] == 2 for m in history)
    # every replica received every update over the weight group
    assert [m["rollout_weight_version"] for m in history] == list(range(ITERATIONS))
    assert all(m["rollout_logprob_diff"] < 1e-3 for m in history)

    placement = json.loads((out / "placement.json").read_text())
    assert placement["launcher"] == "ray" and placement["device_kind"] == "cpu"
    services = placement["services"]
    rewards = ["reward0", "reward1"] if cluster else ["reward0"]
    assert sorted(services) == ["actor", "critic", "reference", *rewards, "rollout0",
                                "rollout1"]
    nodes = {r["node"] for svc in services.values() for r in svc["ranks"]}
    assert len(nodes) == 1 and set(placement["nodes"]) == nodes  # the one Ray node
    for name, svc in services.items():
        host, port = svc["address"].rsplit(":", 1)
        # a private instance keeps services on loopback; on a cluster they bind the address
        # Ray reports for their node
        assert host == ("127.0.0.1" if head is None else next(iter(nodes))), (name, svc)
        assert int(port) > 0, (name, svc)
        assert all(r["pid"] for r in svc["ranks"]), name
    assert services["actor"]["world_size"] == services["critic"]["world_size"] == 2
    assert services["reference"]["world_size"] == (2 if colocate else 1)
    slots = {name: [(r["node"], d) for r in svc["ranks"] for d in r["devices"]]
             for name, svc in services.items()}
    assert slots[rewards[-1]] == []  # a rule reward needs no device
    own = ["actor", "critic", "rollout0", "rollout1"] + ([] if colocate else ["reference"])
    if cluster:  # the reward model: 2 ranks of its own, one slot each
        assert services["reward0"]["world_size"] == 2 and len(slots["reward0"]) == 2
        own.append("reward0")
    every = [s for n in own for s in slots[n]]
    assert len(every) == len(set(every)) == 6 + (0 if colocate else 1) + 2 * cluster
    if colocate:  # the reference ranks sit on the actor's slots, half of each
        assert slots["reference"] == slots["actor"]
        assert services["actor"]["gpu_fraction"] == services["reference"]["gpu_fraction"] == 0.5
