"""RolloutMembership against a real redis-server and real (in-process) gRPC health endpoints:
departures (deregistered, or registered but dead) are dropped, arrivals are caught up first."""

from __future__ import annotations

import pytest

from quartet.registry import Registry, ServiceRecord
from quartet.serving import RoleServer
from quartet.testing.redis_server import redis_server
from services.coordinator.membership import RolloutMembership, discover


@pytest.fixture
def registry():
    with redis_server() as url:
        reg = Registry(url)
        yield reg
        reg.close()


@pytest.fixture
def servers():
    started = []

    def start() -> RoleServer:
        server = RoleServer("rollout", port=0)
        server.start()
        server.set_serving(True)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop(0)


def register(registry: Registry, name: str, address: str) -> None:
    registry.register(ServiceRecord("rollout", name, address, 0, "SERVING"), ttl_s=30)


def test_replicas_leave_and_join_between_iterations(registry, servers):
    a, b, c = servers(), servers(), servers()
    register(registry, "a", a.address)
    register(registry, "b", b.address)
    found = discover(registry, ["rollout"], timeout_s=5)
    caught_up, changes = [], []
    membership = RolloutMembership(
        registry, {r.replica: r.replica for r in found["rollout"]},
        make_replica=lambda rec: rec.replica,
        catch_up=lambda replica, version: caught_up.append((replica, version)) or 0.5,
        on_change=changes.append)
    assert membership(0, 0) == (["a", "b"], {"replicas/rollout": 2.0, "replicas/joined": 0.0,
                                              "replicas/left": 0.0})
    registry.deregister("rollout", "b")
    assert membership(1, 1)[0] == ["a"]
    register(registry, "c", c.address)
    replicas, metrics = membership(2, 2)
    assert replicas == ["a", "c"] and metrics["replicas/joined"] == 1.0
    assert caught_up == [("c", 2)]
    assert changes == [["a"], ["a", "c"]]


def test_a_registered_replica_that_is_dead_is_dropped(registry, servers):
    a, b = servers(), servers()
    register(registry, "a", a.address)
    register(registry, "b", b.address)
    membership = RolloutMembership(registry, {"a": "a", "b": "b"}, lambda r: r.replica,
                                   lambda r, v: 0.0, lambda current: None,
                                   health_timeout_s=1.0)
    b.stop(0)  # killed: its registry key outlives it until the TTL
    replicas, metrics = membership(3, 3)
    assert replicas == ["a"] and metrics["replicas/left"] == 1.0
    a.stop(0)
    with pytest.raises(RuntimeError, match="no SERVING rollout replica"):
        membership(4, 4)


def test_discover_names_the_missing_roles(registry):
    with pytest.raises(TimeoutError, match="no SERVING replica of actor, critic"):
        discover(registry, ["actor", "critic"], timeout_s=0.3, poll_s=0.1)
