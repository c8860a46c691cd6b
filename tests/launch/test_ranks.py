"""The multi-rank launch contract: each rank's environment, names, and single-rank roles
(and single-rank reward sources) refusing a world > 1."""

import os
import subprocess
import sys

import pytest

from quartet.launch.local import LocalCluster
from quartet.launch.ranks import rank_env, rank_name, start_role_ranks

REWARD = "examples/rewards/length_reward.py"


def test_rank_env_carries_the_rendezvous():
    assert rank_env(1, 4, "10.0.0.2", 29511, local_rank=0) == {
        "RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.2",
        "MASTER_PORT": "29511"}
    assert rank_env(2, 4, "h", 1)["LOCAL_RANK"] == "2"
    with pytest.raises(ValueError, match="rank: must be in 0..1"):
        rank_env(2, 2, "h", 1)


def test_rank_zero_keeps_the_service_name():
    assert [rank_name("actor", k) for k in range(3)] == ["actor", "actor.rank1", "actor.rank2"]


def test_bad_world_sizes_are_rejected(tmp_path):
    cluster = LocalCluster(tmp_path)
    with pytest.raises(ValueError, match="world_size: must be >= 1"):
        start_role_ranks(cluster, "actor", [], 0)
    with pytest.raises(ValueError, match="rank_envs: 1 entries for 2 ranks"):
        start_role_ranks(cluster, "actor", [], 2, rank_envs=[{}])
    assert not cluster.services


def _serve(role: str, args: list[str], rank: int) -> subprocess.CompletedProcess:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quartet.cli.main", "serve", role, *args,
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=120)


def test_single_rank_roles_refuse_a_world_of_two():
    proc = _serve("rollout", ["--model", "m"], 0)
    assert proc.returncode == 2
    assert "runs one rank, but WORLD_SIZE=2" in proc.stderr


def test_only_a_reward_model_runs_several_ranks():
    """The reward role is multi-rank for a model; a rule reward refuses rank 1 of 2."""
    proc = _serve("reward", ["--reward-func", REWARD], 1)
    assert proc.returncode == 1
    assert "only a reward model (--model) runs several ranks" in proc.stderr
