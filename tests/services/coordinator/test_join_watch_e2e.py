"""A rollout replica that dies while the weight group forms (`GroupWeightSync.setup`):
the coordinator's `JoinWatch` aborts the forming group at once, so the actor and the other
replica leave it and `setup` raises the dead replica's error within seconds, not at the
group's timeout; the surviving members then form a new group and take an update.

Real processes: the actor and two rollout replicas (HF, tiny model) as `quartet serve`
services. The victim is SIGSTOPped before the group forms (its InitWeightGroup call hangs
unanswered, as a replica that froze or is still loading would) and SIGKILLed once the
others wait in the group: its call then fails, which is what `JoinWatch` reacts to.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.clients.rollout import GrpcRolloutClient
from quartet.config.base import config_to_argv, parse_config
from quartet.launch.local import LocalCluster
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import training_role_config
from services.coordinator.weight_sync import GroupWeightSync

pytestmark = pytest.mark.slow

REWARD = Path(__file__).resolve().parents[2] / "integration" / "rewards" / "digit_reward.py"

GROUP_TIMEOUT_S = 120.0
"""The group's own timeout: without the abort the members would wait this long."""
LEFT_WITHIN_S = 30.0


def test_a_replica_killed_while_the_group_forms_fails_setup_fast_and_the_rest_reform(
        tmp_path, tiny_model_path, tiny_data):
    cfg = parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(tiny_model_path),
        "--data.dataset", str(tiny_data["prompts"]), "--ckpt.output_dir", str(tmp_path),
        "--reward.func", str(REWARD),
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32"])
    rollout = ["--model", str(tiny_model_path), "--backend", "hf", "--dtype", "float32"]
    with LocalCluster(tmp_path / "logs", env={"OMP_NUM_THREADS": "1"}) as services:
        services.start("actor", ["--save-root", str(tmp_path), *config_to_argv(
            training_role_config(cfg, str(tiny_model_path), cfg.actor.learning_rate, None))])
        services.start("rollout", rollout, name="rollout0")
        victim = services.start("rollout", rollout, name="rollout1")
        services.wait_healthy(300)
        actor = GrpcActorClient(services.address_of("actor"), timeout_s=300)
        survivor = GrpcRolloutClient(services.address_of("rollout0"))
        doomed = GrpcRolloutClient(services.address_of("rollout1"))
        try:
            sync = GroupWeightSync(actor, [survivor, doomed], "gloo",
                                   timeout_s=GROUP_TIMEOUT_S)
            doomed.info()  # its channel is connected: the join call will wait, not fail
            os.kill(victim.process.pid, signal.SIGSTOP)
            outcome: list[BaseException | None] = []
            forming = threading.Thread(target=lambda: outcome.append(_setup(sync)))
            forming.start()
            time.sleep(3.0)  # the actor and rollout0 are in the group, waiting for rollout1
            assert forming.is_alive(), f"setup ended before the kill: {outcome}"
            killed_at = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL)
            forming.join(GROUP_TIMEOUT_S + 30)
            took = time.monotonic() - killed_at
            assert not forming.is_alive(), "setup still waiting after the group's timeout"
            error = outcome[0]
            assert isinstance(error, RoleCallError), error
            assert error.address == doomed.address and error.method == "InitWeightGroup", error
            assert took < LEFT_WITHIN_S, f"setup raised {took:.0f}s after the kill"

            # the actor and rollout0 left the aborted group: a group of the two forms, and
            # an update reaches rollout0
            again = GroupWeightSync(actor, [survivor], "gloo", timeout_s=GROUP_TIMEOUT_S)
            again.setup()
            version = survivor.info().weight_version + 1
            again(version)
            assert survivor.info().weight_version == version
        finally:
            actor.close()
            survivor.close()
            doomed.close()


def _setup(sync: GroupWeightSync) -> BaseException | None:
    try:
        sync.setup()
    except BaseException as exc:  # noqa: BLE001 - the test inspects what setup raised
        return exc
    return None
