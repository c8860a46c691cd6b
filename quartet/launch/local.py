"""Embedded mode: every role as a local process on a free loopback port.

Each service is a real `quartet serve <role>` process; it binds port 0 and reports the
port through a file, so parallel runs and test sessions never collide on ports. Logs go to
`<log_dir>/<role>.log`; a service that dies while starting raises with its log's tail.

Supervision (the `RoleLauncher` interface the coordinator's recovery uses): `exited()` names
the services whose process ended, `restart(name)` starts one again on the same port (so
clients reconnect without new addresses), `retire(name)` stops one for good. On Linux every
service gets SIGKILL when the process that started it dies, even by SIGKILL, so no role
process outlives its launcher.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quartet.clients.health import wait_for_serving
from quartet.launch.parent_death import child_env
from quartet.serving.interceptors import LOG_FILE_ENV

log = logging.getLogger("quartet.launch")

# Each role forms its own torch.distributed world (and the weight group its own store): a
# launcher's rendezvous variables inherited from this process would make every role bind
# the same MASTER_PORT.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
            "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK")


@dataclass
class LocalService:
    name: str
    role: str
    process: subprocess.Popen
    port_file: Path
    log_path: Path
    port: int = 0
    serves_grpc: bool = True
    """False for ranks > 0 of a multi-rank role: no port, nothing to health-check."""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalCluster:
    """Starts, health-checks and stops role processes; a context manager."""

    def __init__(self, log_dir: str | os.PathLike, env: dict[str, str] | None = None,
                 service_args: list[str] | None = None) -> None:
        """`service_args` go to every service (e.g. `--trace.file`, `--registry`)."""
        self.log_dir = Path(log_dir)
        self.service_args = list(service_args or ())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items()
                    if k not in DIST_ENV and not k.startswith("TORCHELASTIC_")}
        self.services: dict[str, LocalService] = {}

    def start(self, role: str, args: list[str], name: str | None = None,
              env: dict[str, str] | None = None, serves_grpc: bool = True) -> LocalService:
        name = name or role
        if name in self.services:
            raise ValueError(f"a service named {name!r} is already running")
        port_file = self.log_dir / f"{name}.port"
        log_path = self.log_dir / f"{name}.log"
        svc = LocalService(name, role, None, port_file, log_path,  # type: ignore[arg-type]
                           serves_grpc=serves_grpc, args=list(args), env=dict(env or {}))
        self._spawn(svc, port=0)
        self.services[name] = svc
        return svc

    def _spawn(self, svc: LocalService, port: int) -> None:
        svc.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "quartet.cli.main", "serve", svc.role, "--port", str(port),
               "--port-file", str(svc.port_file), "--replica-id", svc.name, *self.service_args,
               *svc.args]
        log.info("starting %s: %s", svc.name, " ".join(cmd))
        with open(svc.log_path, "a" if svc.restarts else "w") as log_file:
            if svc.restarts:
                log_file.write(f"\n---- restart {svc.restarts} of {svc.name} ----\n")
                log_file.flush()
            svc.process = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, LOG_FILE_ENV: str(svc.log_path.resolve()), **svc.env,
                     **child_env()},
                start_new_session=True,
            )
        svc.port = port

    # ---------------------------------------------------------------- supervision
    def exited(self) -> list[str]:
        """Services whose process has ended (crashed, killed, or stopped on its own)."""
        return [n for n, svc in self.services.items() if svc.process.poll() is not None]

    def address_of(self, name: str) -> str:
        return self.services[name].address

    def role_of(self, name: str) -> str:
        return self.services[name].role

    def names(self) -> list[str]:
        return list(self.services)

    def restart(self, name: str, timeout_s: float = 300.0) -> str:
        """Starts service `name` again with the same flags on the same port (killing what is
        left of it first) and waits until it is SERVING; returns its address."""
        svc = self.services[name]
        if not svc.serves_grpc or any(not other.serves_grpc and other.role == svc.role
                                      for other in self.services.values()):
            raise RuntimeError(f"{name}: restarting a multi-rank role is not supported")
        self._kill(svc)
        svc.restarts += 1
        self._spawn(svc, port=svc.port)
        self.wait_healthy(timeout_s, [name])
        log.info("%s restarted (restart %d) at %s", name, svc.restarts, svc.address)
        return svc.address

    def retire(self, name: str) -> None:
        """Stops service `name` for good and forgets it."""
        svc = self.services.pop(name)
        self._kill(svc)

    @staticmethod
    def _kill(svc: LocalService) -> None:
        """SIGKILL the service's whole process group (its engine workers included)."""
        try:
            os.killpg(svc.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        svc.process.wait()

    def _read_port(self, svc: LocalService, deadline: float) -> None:
        while time.monotonic() < deadline:
            if svc.process.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with code {svc.process.returncode} "
                                   f"while starting; log tail:\n{svc.log_tail()}")
            try:
                text = svc.port_file.read_text().strip()
            except OSError:
                text = ""
            if text:
                svc.port = int(text)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{svc.name} did not bind a port; log tail:\n{svc.log_tail()}")

    def wait_healthy(self, timeout_s: float = 300.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names or list(self.services):
            svc = self.services[name]
            if not svc.serves_grpc:
                continue
            if not svc.port:
                self._read_port(svc, deadline)
            try:
                wait_for_serving(svc.address, max(deadline - time.monotonic(), 1.0),
                                 svc.process, what=svc.name)
            except (RuntimeError, TimeoutError) as exc:
                raise type(exc)(f"{exc}; log tail of {svc.log_path}:\n{svc.log_tail()}"
                                ) from None
        for name in names or list(self.services):
            svc = self.services[name]
            if svc.process.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with code {svc.process.returncode}; "
                                   f"log tail of {svc.log_path}:\n{svc.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every service, wait, SIGKILL stragglers; returns exit codes by name."""
        for svc in self.services.values():
            if svc.process.poll() is None:
                svc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, svc in self.services.items():
            try:
                codes[name] = svc.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                codes[name] = None
            # Engine workers the service started (vLLM's engine core) share its process
            # group; none may outlive it.
            self._kill(svc)
            codes[name] = svc.process.returncode if codes[name] is None else codes[name]
        self.services.clear()
        return codes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
