"""The committed stubs in quartet/v1 must equal a fresh generation from proto/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_has_a_contract_with_getinfo_or_run_rpcs():
    from quartet.roles import ROLES, SERVICE_NAMES
    from quartet.v1 import (
        actor_pb2,
        coordinator_pb2,
        critic_pb2,
        reference_pb2,
        reward_pb2,
        rollout_pb2,
    )

    modules = {"actor": actor_pb2, "critic": critic_pb2, "reward": reward_pb2,
               "reference": reference_pb2, "rollout": rollout_pb2,
               "coordinator": coordinator_pb2}
    for role in ROLES:
        service_name = SERVICE_NAMES[role].split(".")[-1]
        service = modules[role].DESCRIPTOR.services_by_name[service_name]
        methods = {m.name for m in service.methods}
        assert methods, role
        if role != "coordinator":
            assert "GetInfo" in methods, role
