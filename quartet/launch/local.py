"""Embedded mode: every role as a local process on a free loopback port.

Each service is a real `quartet serve <role>` process; it binds port 0 and reports the
port through a file, so parallel runs and test sessions never collide on ports. Logs go to
`<log_dir>/<role>.log`; a service that dies while starting raises with its log's tail.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quartet.clients.health import wait_for_serving
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
        port_file.unlink(missing_ok=True)
        log_path = self.log_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "quartet.cli.main", "serve", role, "--port", "0",
               "--port-file", str(port_file), "--replica-id", name, *self.service_args, *args]
        log.info("starting %s: %s", name, " ".join(cmd))
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, LOG_FILE_ENV: str(log_path.resolve()), **(env or {})},
                start_new_session=True,
            )
        svc = LocalService(name, role, process, port_file, log_path, serves_grpc=serves_grpc)
        self.services[name] = svc
        return svc

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
                os.killpg(svc.process.pid, signal.SIGKILL)
                codes[name] = svc.process.wait()
        self.services.clear()
        return codes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
