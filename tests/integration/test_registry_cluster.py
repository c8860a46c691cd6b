"""Cluster mode with a real redis-server: services register, the coordinator discovers them and
follows rollout replicas coming and going between iterations.

Two rollout replicas serve iteration 1; one is stopped (SIGTERM: it deregisters) and
iteration 2 runs on the other; a third registers and, brought to the current weights first
(the loop rejects samples from stale weights), serves iteration 3 with the first; then the
third is SIGKILLed (its registry entry outlives it until the TTL; its health check fails) and
iteration 4 runs on the first alone.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quartet.config.base import config_to_argv, parse_config
from quartet.launch.local import LocalCluster
from quartet.registry import Registry
from quartet.testing.redis_server import redis_server

HERE = Path(__file__).resolve().parent
ROLLOUT = ["--backend", "hf", "--dtype", "float32"]


def wait_registered(registry: Registry, role: str, replica: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r.replica == replica and r.serving for r in registry.services(role)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{role}/{replica} never registered as SERVING")


def join(services: LocalCluster, registry: Registry, model: Path, name: str,
         args: list[str]) -> None:
    """Starts rollout replica `name` and waits until it is registered as SERVING."""
    services.start("rollout", ["--model", str(model), *args], name=name)
    services.wait_healthy(300, [name])
    wait_registered(registry, "rollout", name)


def stop(services: LocalCluster, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
    process = services.services[name].process
    process.send_signal(sig)
    process.wait(60)


def job_config(model: Path, prompts: Path, url: str, out: Path, iterations: int,
               *extra: str):
    from services.coordinator.config import PPOJobConfig

    return parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--registry", url, "--rollout.batch_size", "8", "--rollout.max_new_tokens", "6",
        "--train.batch_size", "8", "--train.micro_batch_size", "8",
        "--train.num_iterations", str(iterations), "--ckpt.output_dir", str(out),
        "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
        "--algo.advantage.estimator", "reinforce", "--algo.kl.init_coef", "0",
        "--actor.learning_rate", "1e-3", *extra,
    ])


@contextmanager
def started_cluster(url: str, cfg, model: Path, out: Path) -> Iterator[LocalCluster]:
    """A LocalCluster registering with `url`, running the actor and the reward."""
    from services.coordinator.launch import training_role_config

    with LocalCluster(out / "service-logs", env={"OMP_NUM_THREADS": "1"},
                      service_args=["--registry", url, "--registry-ttl-s", "5"]) as services:
        services.start("actor", ["--save-root", str(out), *config_to_argv(
            training_role_config(cfg, str(model), cfg.actor.learning_rate, None))])
        services.start("reward", ["--reward-func", str(HERE / "rewards" / "digit_reward.py")])
        yield services


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tiny_model_path, tiny_data):
    from services.coordinator.job import run

    out = tmp_path_factory.mktemp("registry-run")
    with redis_server() as url:
        registry = Registry(url)
        cfg = job_config(tiny_model_path, tiny_data["prompts"], url, out, 4)
        with started_cluster(url, cfg, tiny_model_path, out) as services:
            services.start("rollout", ["--model", str(tiny_model_path), *ROLLOUT], name="ra")
            services.start("rollout", ["--model", str(tiny_model_path), *ROLLOUT], name="rb")
            services.wait_healthy(300)
            for name in ("ra", "rb"):
                wait_registered(registry, "rollout", name)

            def between_iterations(event: dict) -> None:
                if event["phase"] != "done":
                    return
                if event["iteration"] == 0:
                    stop(services, "rb")
                elif event["iteration"] == 1:
                    join(services, registry, tiny_model_path, "rc", ROLLOUT)
                elif event["iteration"] == 2:
                    stop(services, "rc", signal.SIGKILL)
                    assert any(r.replica == "rc" for r in registry.services("rollout"))

            history = run(cfg, run_id="registry-test", on_event=between_iterations)
            runs = registry.runs()
        registry.close()
    return out, history, runs


def samples_by_replica(metrics: dict) -> dict[str, float]:
    return {k.split("/")[1]: v for k, v in metrics.items()
            if k.startswith("rollout/") and k.endswith("/samples")}


def test_replicas_come_and_go_between_iterations(cluster_run):
    _, history, _ = cluster_run
    assert len(history) == 4
    first, second, third, fourth = (samples_by_replica(m) for m in history)
    assert first == {"ra": 4.0, "rb": 4.0}, first
    assert second == {"ra": 8.0}, second
    assert third == {"ra": 4.0, "rc": 4.0}, third
    assert fourth == {"ra": 8.0}, fourth
    assert [m["replicas/rollout"] for m in history] == [2, 1, 2, 1]
    assert history[1]["replicas/left"] == 1 and history[2]["replicas/joined"] == 1
    assert history[3]["replicas/left"] == 1
    # rc served iteration 3 with the weights of version 2 (pushed to it alone when it joined)
    assert history[2]["rollout_weight_version"] == 2


def test_run_state_is_in_the_registry(cluster_run):
    out, _, runs = cluster_run
    [state] = [r for r in runs if r["run_id"] == "registry-test"]
    assert state["status"] == "finished"
    assert state["iteration"] == "4" and state["policy_version"] == "4"
    assert state["last_checkpoint"].endswith("hf/final")
    assert (out / "curves.png").exists()


@pytest.mark.slow
def test_with_enable_sleep_the_replicas_in_the_run_release(tmp_path, tiny_model_path, tiny_data):
    """--vllm.enable_sleep in registry mode: a vLLM replica that joins mid-run releases its
    memory after each generate phase like the first, and one that left is not asked to (it
    used to be: the release list was fixed at start, so the run failed once ra was gone)."""
    from services.coordinator.job import run

    out = tmp_path / "run"
    vllm = ["--backend", "vllm", "--dtype", "float32", "--max-model-len", "128",
            "--enforce-eager", "--enable-sleep"]
    with redis_server() as url:
        registry = Registry(url)
        cfg = job_config(tiny_model_path, tiny_data["prompts"], url, out, 3,
                         "--vllm.enable_sleep")
        with started_cluster(url, cfg, tiny_model_path, out) as services:
            services.start("rollout", ["--model", str(tiny_model_path), *vllm], name="ra")
            services.wait_healthy(300)
            wait_registered(registry, "rollout", "ra")

            def between_iterations(event: dict) -> None:
                if event["phase"] != "done":
                    return
                if event["iteration"] == 0:
                    join(services, registry, tiny_model_path, "rc", vllm)
                elif event["iteration"] == 1:
                    stop(services, "ra")

            history = run(cfg, run_id="registry-sleep", on_event=between_iterations)
        registry.close()
    assert [m["replicas/rollout"] for m in history] == [1, 2, 1]
    assert [sorted(samples_by_replica(m)) for m in history] == [["ra"], ["ra", "rc"], ["rc"]]
    released = "released the generator's weights"
    logs = out / "service-logs"
    assert (logs / "ra.log").read_text().count(released) == 2  # iterations 1 and 2
    assert (logs / "rc.log").read_text().count(released) == 2  # iterations 2 and 3
