"""RoleRecovery against a launcher double: restarts within a budget, retirement of rollout
replicas down to the minimum, rewinds for the actor/critic, and WireVersions."""

from __future__ import annotations

import grpc
import pytest

from quartet.clients.base import RoleCallError
from services.coordinator.recovery import RestartPolicy, RoleRecovery
from services.coordinator.weight_sync import WireVersions


class FakeLauncher:
    def __init__(self, roles: dict[str, str], fail_restarts: set[str] = frozenset()) -> None:
        self.roles = dict(roles)
        self.dead: set[str] = set()
        self.fail_restarts = set(fail_restarts)
        self.restarted: list[str] = []

    def exited(self):
        return sorted(self.dead)

    def restart(self, name, timeout_s=300.0):
        if name in self.fail_restarts:
            raise RuntimeError(f"{name} exited with code 1 while starting")
        self.dead.discard(name)
        self.restarted.append(name)
        return self.address_of(name)

    def retire(self, name):
        self.dead.discard(name)
        del self.roles[name]

    def role_of(self, name):
        return self.roles[name]

    def address_of(self, name):
        return f"addr-{name}"

    def names(self):
        return list(self.roles)


class FakeWeights:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def bring_up(self, address):
        self.calls.append(("bring_up", address))

    def retire(self, address):
        self.calls.append(("retire", address))

    def reform(self):
        self.calls.append(("reform", ""))


ERROR = RoleCallError("rollout", "addr", "Generate", grpc.StatusCode.UNAVAILABLE, "gone")
ROLES = {"actor": "actor", "critic": "critic", "rollout0": "rollout", "rollout1": "rollout"}


def recovery(launcher, **policy):
    weights = FakeWeights()
    return RoleRecovery(launcher, RestartPolicy(exit_wait_s=0.0, **policy), weights), weights


def test_no_dead_process_means_the_error_is_not_ours():
    rec, _ = recovery(FakeLauncher(ROLES))
    with pytest.raises(RoleCallError):
        rec.repair(ERROR)


def test_a_restarted_rollout_gets_the_weights_alone_and_the_phase_reruns():
    launcher = FakeLauncher(ROLES)
    launcher.dead = {"rollout1"}
    rec, weights = recovery(launcher)
    result = rec.repair(ERROR)
    assert result.restarted == ["rollout1"] and not result.rewind
    assert weights.calls == [("bring_up", "addr-rollout1")]


def test_a_restarted_actor_means_a_rewind():
    launcher = FakeLauncher(ROLES)
    launcher.dead = {"actor"}
    rec, weights = recovery(launcher)
    assert rec.repair(ERROR).rewind
    assert weights.calls == [("reform", "")]


def test_a_rollout_that_cannot_come_back_is_retired_down_to_the_minimum():
    launcher = FakeLauncher(ROLES, fail_restarts={"rollout0", "rollout1"})
    launcher.dead = {"rollout0"}
    rec, weights = recovery(launcher, max_restarts=2)
    result = rec.repair(ERROR)
    assert result.retired == ["addr-rollout0"] and rec.restarts["rollout0"] == 2
    assert ("retire", "addr-rollout0") in weights.calls
    launcher.dead = {"rollout1"}
    with pytest.raises(RuntimeError, match="did not come back after 2 restart"):
        rec.repair(ERROR)


def test_restarts_are_bounded_per_process():
    launcher = FakeLauncher(ROLES)
    rec, _ = recovery(launcher, max_restarts=1)
    launcher.dead = {"actor"}
    rec.repair(ERROR)
    launcher.dead = {"actor"}
    launcher.fail_restarts = {"actor"}
    with pytest.raises(RuntimeError, match="actor actor at addr-actor died"):
        rec.repair(ERROR)


def test_wire_versions_only_increase_across_a_rewind():
    v = WireVersions()
    assert [v.next_wire(i) for i in (1, 2, 3)] == [1, 2, 3]
    assert v.next_wire(1) == 4  # rewound to version 1: the replicas see 4
    assert v.from_wire(4) == 1 and v.to_wire(2) == 5
    assert v.next_wire(2) == 5


def test_unavailable_from_a_process_that_just_came_back_is_rerun_a_few_times():
    launcher = FakeLauncher(ROLES)
    launcher.dead = {"rollout0"}
    rec = RoleRecovery(launcher, RestartPolicy(exit_wait_s=0.0, reconnect_wait_s=0.0,
                                               reconnect_tries=2), FakeWeights())
    rec.repair(ERROR)
    stale = RoleCallError("rollout", "addr-rollout0", "Generate", grpc.StatusCode.UNAVAILABLE,
                          "connections to all backends failing")
    assert rec.repair(stale).restarted == [] and rec.repair(stale).restarted == []
    with pytest.raises(RoleCallError):
        rec.repair(stale)
