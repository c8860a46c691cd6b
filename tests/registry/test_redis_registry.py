"""The registry against a real redis-server: TTL expiry, deregistration, run state."""

from __future__ import annotations

import time

import pytest

from quartet.registry import Registry, RegistryHeartbeat, ServiceRecord
from quartet.testing.redis_server import redis_server
from quartet.v1 import common_pb2


@pytest.fixture(scope="module")
def registry():
    with redis_server() as url:
        reg = Registry(url)
        yield reg
        reg.close()


def test_a_record_expires_after_its_ttl_unless_renewed(registry):
    registry.register(ServiceRecord("rollout", "r0", "10.0.0.1:1", 3, "SERVING", 2), ttl_s=0.5)
    [rec] = registry.services("rollout")
    assert (rec.replica, rec.address, rec.weight_version, rec.load, rec.serving) == (
        "r0", "10.0.0.1:1", 3, 2, True)
    time.sleep(0.8)
    assert registry.services("rollout") == []


def test_heartbeat_reports_health_and_info_and_deregisters_on_stop(registry):
    state = {"serving": False}
    info = common_pb2.ServiceInfo(policy_version=7, inflight_requests=4)
    beat = RegistryHeartbeat(registry, "actor", "a0", "h:1", lambda: state["serving"],
                             lambda: info, ttl_s=3, interval_s=0.1).start()
    time.sleep(0.3)
    [rec] = registry.services("actor")
    assert rec.health == "NOT_SERVING" and rec.weight_version == -1
    state["serving"] = True
    time.sleep(0.3)
    [rec] = registry.services("actor")
    assert rec.serving and rec.weight_version == 7 and rec.load == 4
    beat.stop()
    assert registry.services("actor") == []


def test_run_state_is_listed_newest_first(registry):
    registry.write_run("old", iteration=1, status="finished")
    registry.write_run("new", iteration=2, policy_version=2, last_checkpoint="/x")
    runs = registry.runs()
    assert [r["run_id"] for r in runs][:2] == ["new", "old"]
    assert runs[0]["last_checkpoint"] == "/x" and runs[0]["policy_version"] == "2"


def test_quartet_runs_lists_runs_and_services(registry, capsys):
    from quartet.cli.runs import main

    registry.write_run("listed-run", status="running", iteration=2, num_iterations=5,
                       policy_version=2, last_checkpoint="/ckpt/hf/iter2")
    registry.register(ServiceRecord("rollout", "r9", "10.0.0.9:50061", 2, "SERVING", 1), 30)
    assert main(["--registry", registry.url]) == 0
    out = capsys.readouterr().out
    run_line = next(line for line in out.splitlines() if line.startswith("listed-run"))
    assert "running" in run_line and "2/5" in run_line and "/ckpt/hf/iter2" in run_line
    assert any(line.split()[:3] == ["rollout", "r9", "10.0.0.9:50061"]
               for line in out.splitlines())


def test_quartet_runs_names_an_unreachable_registry(capsys):
    from quartet.cli.runs import main
    from quartet.ports import free_port

    assert main(["--registry", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert "quartet runs: error: registry redis://127.0.0.1:" in capsys.readouterr().err
