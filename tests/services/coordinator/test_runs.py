"""Coordinator service over a real in-process gRPC server; the PPO runner is a test double
so these tests exercise run state, events and errors, not training (see integration)."""

import threading

import grpc
import pytest

from quartet.serving import PermissionDenied, RoleServer
from quartet.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.runs import RunManager
from services.coordinator.servicer import CoordinatorServicer

GOOD = """
actor: {model_name_or_path: /models/policy}
data: {dataset: /data/prompts.jsonl}
reward: {func: [r.py]}
train.num_iterations: 3
"""


class FakeRunner:
    """Emits the loop's events for each iteration; waits on `gate` between iterations."""

    def __init__(self):
        self.gate = threading.Semaphore(0)
        self.configs = []

    def __call__(self, cfg, run_id, on_event, stop):
        self.configs.append(cfg)
        for it in range(cfg.train.num_iterations):
            self.gate.acquire(timeout=10)
            if stop.is_set():
                return []
            on_event({"iteration": it, "phase": "generate"})
            on_event({"iteration": it, "phase": "done",
                      "metrics": {"iteration": it + 1.0, "reward": 0.1 * it,
                                  "policy_version": it + 1.0, "time/train": 0.5}})
        return []


@pytest.fixture()
def coordinator():
    runner = FakeRunner()
    srv = RoleServer("coordinator", port=0)
    srv.start()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(RunManager(runner)), srv.grpc_server)
    srv.set_serving(True)
    channel = grpc.insecure_channel(srv.address)
    yield coordinator_pb2_grpc.CoordinatorStub(channel), runner
    channel.close()
    srv.stop(0)


def _code(fn, *args):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)
    return info.value.code(), info.value.details()


def test_run_lifecycle_and_watch(coordinator):
    stub, runner = coordinator
    run_id = stub.StartRun(coordinator_pb2.StartRunRequest(config_yaml=GOOD,
                                                           run_id="r1"), timeout=10).run_id
    assert run_id == "r1"
    assert runner.configs and runner.configs[0].actor.model_name_or_path == "/models/policy"
    assert runner.configs[0].reward.func == ("r.py",)
    code, details = _code(stub.StartRun, coordinator_pb2.StartRunRequest(config_yaml=GOOD))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "r1" in details
    for _ in range(3):
        runner.gate.release()
    events = list(stub.WatchRun(coordinator_pb2.GetRunRequest(run_id="r1"), timeout=20))
    phases = [e.phase for e in events]
    assert phases[0] == "start" and phases[-1] == "done" and phases.count("done") == 4
    assert events[-1].state == coordinator_pb2.RUN_STATE_SUCCEEDED
    status = stub.GetRun(coordinator_pb2.GetRunRequest(run_id="r1"), timeout=10)
    assert status.iteration == 3 and status.total_iterations == 3
    assert status.policy_version == 3 and abs(status.last_metrics["reward"] - 0.2) < 1e-9


def test_stop_run_ends_after_the_current_iteration(coordinator):
    stub, runner = coordinator
    stub.StartRun(coordinator_pb2.StartRunRequest(config_yaml=GOOD, run_id="r2"), timeout=10)
    runner.gate.release()
    stub.StopRun(coordinator_pb2.StopRunRequest(run_id="r2", reason="enough"), timeout=10)
    runner.gate.release()
    events = list(stub.WatchRun(coordinator_pb2.GetRunRequest(run_id="r2"), timeout=20))
    assert events[-1].state == coordinator_pb2.RUN_STATE_STOPPED
    assert any(e.phase == "stop" and e.message == "enough" for e in events)


@pytest.mark.parametrize("config, text", [
    ("actor: [", "not valid YAML"),
    ("- a\n- b", "expected a mapping"),
    ("actor: {model_name_or_path: m}\nreward: {func: [r.py]}", "--data.dataset: is required"),
    (GOOD + "algo: {advantage: {estimator: ppo2}}", "--algo.advantage.estimator"),
    (GOOD + "actor: {learning_rte: 1}", "--actor.learning_rte: unknown option"),
])
def test_bad_configs_are_invalid_argument_naming_the_flag(coordinator, config, text):
    stub, _ = coordinator
    code, details = _code(stub.StartRun, coordinator_pb2.StartRunRequest(config_yaml=config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert text in details


def test_unknown_run_is_not_found(coordinator):
    stub, _ = coordinator
    code, details = _code(stub.GetRun, coordinator_pb2.GetRunRequest(run_id="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details


def test_reward_code_and_output_are_confined_to_what_the_service_allows(tmp_path):
    allowed = tmp_path / "rewards"
    allowed.mkdir()
    (allowed / "r.py").write_text("def reward_func(q, p, l):\n    return [0.0] * len(q)\n")
    runner = FakeRunner()
    manager = RunManager(runner, allowed_reward_dirs=[str(allowed)], runs_root=str(tmp_path))
    outside = GOOD.replace("[r.py]", "[/tmp/evil.py]")
    with pytest.raises(PermissionDenied) as info:
        manager.start(outside + f"ckpt.output_dir: {tmp_path}/run\n")
    assert "reward.func[0]" in str(info.value) and "--allowed-reward-dir" in str(info.value)
    escape = GOOD.replace("[r.py]", f"[{allowed / 'r.py'}]") + "ckpt.output_dir: /etc/x\n"
    with pytest.raises(PermissionDenied) as info:
        manager.start(escape)
    assert "ckpt.output_dir" in str(info.value) and "outside" in str(info.value)
    run = manager.start(GOOD.replace("[r.py]", f"[{allowed / 'r.py'}]") + "ckpt.output_dir: run\n")
    assert run.config.ckpt.output_dir == str(tmp_path / "run")
    assert run.config.reward.func == (str(allowed / "r.py"),)
    run.stop.set()
    for _ in range(3):
        runner.gate.release()
