"""`quartet serve coordinator` as a real process running a real (tiny) PPO run over gRPC,
and `quartet ppo --config FILE.yaml`."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml

from quartet.clients.health import wait_for_serving
from quartet.v1 import coordinator_pb2, coordinator_pb2_grpc

HERE = Path(__file__).resolve().parent


def _config(model, prompts, out) -> dict:
    return {
        "actor": {"model_name_or_path": str(model), "learning_rate": 1e-3},
        "data": {"dataset": str(prompts)},
        "reward": {"func": [str(HERE / "rewards" / "digit_reward.py")]},
        "rollout": {"batch_size": 4, "n_samples_per_prompt": 2, "max_new_tokens": 4},
        "train": {"batch_size": 8, "micro_batch_size": 8, "num_iterations": 2},
        "algo": {"advantage": {"estimator": "group_norm"}, "kl": {"init_coef": 0.0}},
        "ds": {"zero_stage": 0, "param_dtype": "fp32"},
        "ckpt": {"output_dir": str(out)},
    }


def test_coordinator_service_runs_ppo(tmp_path, tiny_model_path, tiny_data):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartet.cli.main", "serve", "coordinator", "--port", "0",
         "--port-file", str(port_file), "--allowed-reward-dir", str(HERE / "rewards"),
         "--runs-root", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        wait_for_serving(address, 60, proc, "coordinator")
        stub = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(address))
        out = tmp_path / "run"
        cfg = yaml.safe_dump(_config(tiny_model_path, tiny_data["prompts"], out))
        run_id = stub.StartRun(coordinator_pb2.StartRunRequest(config_yaml=cfg)).run_id
        events = list(stub.WatchRun(coordinator_pb2.GetRunRequest(run_id=run_id), timeout=600))
        status = stub.GetRun(coordinator_pb2.GetRunRequest(run_id=run_id))
        assert status.state == coordinator_pb2.RUN_STATE_SUCCEEDED, status.message
        assert status.iteration == 2 and status.policy_version == 2
        assert [e.phase for e in events].count("train") == 2
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]


def test_ppo_reads_a_yaml_config_and_flags_override_it(tmp_path, tiny_model_path, tiny_data):
    from quartet.config.base import parse_config
    from services.coordinator.config import PPOJobConfig
    from services.coordinator.job import with_yaml_config

    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_model_path, tiny_data["prompts"], tmp_path)))
    cfg = parse_config(PPOJobConfig, with_yaml_config(
        ["--config", str(path), "--train.num_iterations", "7"]))
    assert cfg.train.num_iterations == 7 and cfg.rollout.n_samples_per_prompt == 2
    assert cfg.algo.advantage.estimator == "group_norm" and cfg.ds.param_dtype == "fp32"
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"actor": {"lr": 1}}))
    result = subprocess.run([sys.executable, "-m", "quartet.cli.main", "ppo", "--config",
                             str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--actor.lr: unknown option" in result.stderr
