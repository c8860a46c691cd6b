"""LocalLauncher: a placement plan realised as local processes, devices per service."""

from __future__ import annotations

from pathlib import Path

import pytest

from quartet.launch.launcher import ServiceCommand
from quartet.launch.local_launcher import LocalLauncher
from quartet.launch.placement import PlacementError, ServiceDemand, plan_placement

REWARD = str(Path("examples/rewards/length_reward.py").resolve())


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def test_each_service_sees_only_its_devices_and_colocated_ones_share(tmp_path):
    # A "cuda" plan realised on this CPU host: the reward services never touch a GPU, so
    # this checks only what each process is shown.
    plan = plan_placement([ServiceDemand("a", "reward", 1, 1), ServiceDemand("b", "reward", 1, 1),
                           ServiceDemand("c", "reward", 1, 2, 2)],
                          colocate={"--colocate": ["a", "b"]}, device_kind="cuda")
    launcher = LocalLauncher(tmp_path / "logs")
    cmd = ServiceCommand("reward", ("--reward-func", REWARD))
    try:
        done = launcher.launch(plan, {"a": cmd, "b": cmd, "c": cmd}, timeout_s=120)
        seen = {s.name: environ(s.ranks[0].pid).get("CUDA_VISIBLE_DEVICES")
                for s in done.services}
        assert seen == {"a": "0", "b": "0", "c": "1,2"}
        for s in done.services:
            host, port = s.address.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        assert done.write(tmp_path / "placement.json").exists()
    finally:
        assert set(launcher.stop().values()) == {0}


def test_a_plan_spanning_two_nodes_names_the_ray_launcher(tmp_path):
    plan = plan_placement([ServiceDemand("actor", "actor", 2, 1)], devices_per_node=1)
    with pytest.raises(PlacementError, match="--launcher ray"):
        LocalLauncher(tmp_path).launch(plan, {}, timeout_s=1)
