"""deploy/: the compose files reference every role consistently, their commands parse with
the real CLI parsers, the Dockerfile installs like the Makefile, and the health probe works.

No Docker engine is needed: `docker-compose config -q` (Debian's docker-compose) validates the
files when it is installed; the structural checks run with PyYAML everywhere.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quartet.config.base import parse_config
from quartet.ports import free_port
from quartet.roles import DEFAULT_PORTS, ROLES, server_module
from quartet.serving import RoleServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GPU_ROLES = ("actor", "critic", "reference", "reward", "rollout")
# --<flag>.address of `quartet ppo` per role; rollout replicas come from the registry.
ADDRESS_FLAGS = {"actor": "--actor.address", "critic": "--critic.address",
                 "reference": "--ref.address", "reward": "--reward.address"}
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value):
    """Compose's ${VAR:-default} with the defaults (the environment is ignored)."""
    if isinstance(value, str):
        return VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def _load(name: str) -> dict:
    return _interpolate(yaml.safe_load((DEPLOY / name).read_text()))


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("compose.yaml")


def _flag(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_one_service_per_role_plus_redis_and_otel(compose):
    services = compose["services"]
    assert set(ROLES) | {"redis", "otel-collector"} <= set(services)
    for role in ROLES:
        svc = services[role]
        assert svc["image"] == "quartet:dev"
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert "quartet" in svc["networks"]
        env = svc["environment"]
        assert env["QUARTET_REGISTRY"].startswith("redis://redis:")
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/models", "/checkpoints"} <= mounts
    assert set(compose["volumes"]) >= {"checkpoints"}
    assert (DEPLOY / "otel-collector.yaml").is_file()
    otel = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert "otlp" in otel["service"]["pipelines"]["traces"]["receivers"]


@pytest.mark.parametrize("role", [r for r in ROLES if r != "coordinator"])
def test_role_services_listen_on_their_port_with_grpc_health(compose, role):
    svc = compose["services"][role]
    port = str(DEFAULT_PORTS[role])
    assert svc["command"][:2] == ["serve", role]
    assert _flag(svc["command"], "--host") == "0.0.0.0"
    assert _flag(svc["command"], "--port") == port
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "/app/deploy/grpc_health_probe.py"]
    assert test[3] == f"127.0.0.1:{port}"
    assert svc["healthcheck"]["start_period"]


@pytest.mark.parametrize("role", GPU_ROLES)
def test_gpu_roles_reserve_their_own_gpu(compose, role):
    (device,) = compose["services"][role]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert len(device["device_ids"]) == 1
    ids = {r: compose["services"][r]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"][0] for r in ("actor", "critic", "rollout")}
    assert len(set(ids.values())) == 3  # the trained roles and vLLM never share by default


def test_coordinator_drives_every_role_by_service_name(compose):
    coord = compose["services"]["coordinator"]
    command = coord["command"]
    assert command[0] == "ppo"
    for role, flag in ADDRESS_FLAGS.items():
        host, port = _flag(command, flag).split(":")
        assert host == role and host in compose["services"]
        assert int(port) == DEFAULT_PORTS[role]
        assert coord["depends_on"][role] == {"condition": "service_healthy"}
    assert _flag(command, "--ckpt.output_dir").startswith("/checkpoints/")
    assert _flag(command, "--vllm.sync_backend") == "grpc"
    # scalable by `--scale rollout=N`: replicas are discovered, not listed
    assert "--vllm.address" not in command
    assert _flag(command, "--registry") == "redis://redis:6379/0"
    assert coord["depends_on"]["rollout"] == {"condition": "service_healthy"}
    assert "ports" not in compose["services"]["rollout"]
    assert "container_name" not in compose["services"]["rollout"]


def _parse_serve(command: list[str]):
    """What `quartet serve <role> ...` would parse (quartet.cli.main.serve), without serving."""
    role, rest = command[1], command[2:]
    module = server_module(role)
    parser = argparse.ArgumentParser(prog=f"quartet serve {role}", exit_on_error=False)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-message-mb", type=int)
    parser.add_argument("--port-file")
    module.add_arguments(parser)
    config_cls = getattr(module, "ROLE_CONFIG", None)
    if config_cls is None:
        return parser.parse_args(rest)
    args, extra = parser.parse_known_args(rest)
    return parse_config(config_cls, extra, prog=f"quartet serve {role}")


@pytest.mark.parametrize("files", [("compose.yaml",),
                                   ("compose.yaml", "compose.external-reward-http.yaml")])
def test_commands_parse_with_the_real_cli(compose, files):
    services = dict(compose["services"])
    for name in files[1:]:
        for svc_name, svc in _load(name)["services"].items():
            services[svc_name] = {**services.get(svc_name, {}), **svc}
    for role in ROLES:
        command = services[role]["command"]
        if role == "coordinator":
            from services.coordinator.config import PPOJobConfig

            cfg = parse_config(PPOJobConfig, command[1:], prog="quartet ppo")
            assert cfg.reward.address == ("reward:50053",)
        else:
            _parse_serve(command)
    reward = _parse_serve(services["reward"]["command"])
    if len(files) > 1:
        assert reward.remote_url == "http://math-verifier-http:8000/get_reward"
        assert reward.remote_retries == 3


def test_external_reward_override_swaps_the_reward_service():
    override = _load("compose.external-reward.yaml")["services"]
    assert set(override) == {"reward"}
    reward = override["reward"]
    assert reward["entrypoint"] == ["python",
                                    "/app/examples/reward_servers/math_verifier_grpc.py"]
    assert (ROOT / "examples/reward_servers/math_verifier_grpc.py").is_file()
    assert _flag(reward["command"], "--port") == str(DEFAULT_PORTS["reward"])
    assert _flag(reward["command"], "--host") == "0.0.0.0"

    http = _load("compose.external-reward-http.yaml")["services"]
    verifier = http["math-verifier-http"]
    assert verifier["entrypoint"][1] == "/app/examples/reward_servers/math_verifier_http.py"
    url = _flag(http["reward"]["command"], "--remote-url")
    assert url.startswith("http://math-verifier-http:" + _flag(verifier["command"], "--port"))
    assert http["reward"]["depends_on"]["math-verifier-http"]["condition"] == "service_healthy"


def test_dockerfile_installs_like_the_makefile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'ENTRYPOINT ["quartet"]' in text
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"install -q (torch==[\d.]+)", makefile).group(1)
    assert f'TORCH_SPEC="{torch_pin}"' in text
    assert "-c requirements/constraints.txt -r requirements/runtime.txt" in makefile
    assert "-c requirements/constraints.txt -r requirements/runtime.txt" in text
    assert "uninstall -y torchvision torchaudio torchcodec" in text
    assert "--no-deps -e ." in text
    for path in ("requirements/", "quartet/", "services/", "examples/", "deploy/"):
        assert f"COPY {path} {path}" in text
    assert "deploy/Dockerfile" in (DEPLOY / "compose.yaml").read_text()


def _probe(address: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY / "grpc_health_probe.py"), address,
                           "--timeout-s", "2"], capture_output=True, text=True, timeout=30)


def test_health_probe_exit_codes():
    server = RoleServer("reward", port=0)
    server.start()
    try:
        result = _probe(server.address)
        assert result.returncode == 1 and "NOT_SERVING" in result.stdout
        server.set_serving(True)
        result = _probe(server.address)
        assert result.returncode == 0 and "SERVING" in result.stdout, result.stderr
    finally:
        server.stop(0)
    closed = f"127.0.0.1:{free_port()}"
    result = _probe(closed)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stdout


DOCKER_COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed")
@pytest.mark.parametrize("overrides", [(), ("compose.external-reward.yaml",),
                                       ("compose.external-reward-http.yaml",)])
def test_docker_compose_config_validates(overrides):
    files = [a for f in ("compose.yaml", *overrides) for a in ("-f", str(DEPLOY / f))]
    result = subprocess.run([DOCKER_COMPOSE, *files, "config", "-q"], capture_output=True,
                            text=True, timeout=60, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr
