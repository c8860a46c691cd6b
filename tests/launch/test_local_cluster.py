"""LocalCluster: real role processes on free ports, clear failures, clean environment."""

import pytest

from quartet.launch.local import LocalCluster

REWARD = "examples/rewards/length_reward.py"


def test_roles_start_healthy_and_stop_with_exit_code_zero(tmp_path):
    cluster = LocalCluster(tmp_path / "logs")
    cluster.start("reward", ["--reward-func", REWARD], name="r0")
    cluster.start("reward", ["--reward-func", REWARD], name="r1")
    cluster.wait_healthy(120)
    ports = {s.port for s in cluster.services.values()}
    assert len(ports) == 2 and 0 not in ports
    assert cluster.stop() == {"r0": 0, "r1": 0}


def test_a_role_that_dies_while_starting_raises_with_its_log(tmp_path):
    with LocalCluster(tmp_path / "logs") as cluster:
        cluster.start("reward", ["--reward-func", str(tmp_path / "missing.py")])
        with pytest.raises(RuntimeError, match="exited with code 1") as info:
            cluster.wait_healthy(120)
    assert "does not exist" in str(info.value)


def test_launcher_rendezvous_variables_do_not_leak_into_roles(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    env = LocalCluster(tmp_path).env
    assert not {"MASTER_PORT", "RANK", "TORCHELASTIC_RUN_ID"} & set(env)
