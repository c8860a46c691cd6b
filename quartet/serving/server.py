"""One gRPC server per role process: health, reflection, limits and graceful shutdown.

Every role serves the standard `grpc.health.v1.Health` service (NOT_SERVING until its
engine is loaded) and server reflection, with explicit message-size limits. SIGTERM/SIGINT
flip health to NOT_SERVING first, so load balancers and the coordinator stop sending work,
then stop the server with a grace period and return normally (exit code 0, no traceback).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quartet.security import ServerSecurity
from quartet.serving.interceptors import server_interceptors
from quartet.v1 import common_pb2

log = logging.getLogger("quartet.serving")

# Streamed slices are ~4 MiB; the limit leaves room for one oversized row or chunk.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
DEFAULT_GRACE_S = 10.0


class _RecordingServer:
    """The grpc.Server a role registers its servicer on; it records service names.

    Generated `add_XServicer_to_server(servicer, server)` functions call
    `add_registered_method_handlers(name, ...)`; recording the name lets health and reflection
    cover every registered service without each role declaring it twice.
    """

    def __init__(self, server: grpc.Server, names: list[str]) -> None:
        self._server = server
        self._names = names
        self.started = False
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_registered_method_handlers(self, service_name, method_handlers):
        if service_name not in self._names:
            self._names.append(service_name)
        self.handlers[service_name] = dict(method_handlers)
        # grpc only takes registered (fast-path) handlers before start; the generic handler
        # that the same add_XServicer_to_server call registers serves the methods after it.
        if not self.started:
            self._server.add_registered_method_handlers(service_name, method_handlers)

    def __getattr__(self, name):
        return getattr(self._server, name)


def bind(server: grpc.Server, address: str, security: ServerSecurity) -> int:
    """Adds the listening port: TLS (mutual with a client CA) when configured."""
    if not security.tls:
        return server.add_insecure_port(address)
    credentials = grpc.ssl_server_credentials(
        [(security.private_key, security.cert_chain)], root_certificates=security.client_ca,
        require_client_auth=security.client_ca is not None)
    return server.add_secure_port(address, credentials)


class RoleServer:
    """A gRPC server hosting one role; the role's module registers its servicer on it."""

    def __init__(
        self,
        role: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_workers: int = 16,
        grace_s: float = DEFAULT_GRACE_S,
        security: ServerSecurity | None = None,
    ) -> None:
        self.role = role
        self.security = security or ServerSecurity()
        self.grace_s = grace_s
        self.max_message_bytes = max_message_bytes
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=role),
            interceptors=server_interceptors(role, self.security),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._service_names: list[str] = []
        # Servicers may be added after start(): the server answers health (NOT_SERVING)
        # while a role loads its engine, then the role registers and flips to SERVING.
        self.grpc_server = _RecordingServer(self._server, self._service_names)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = bind(self._server, address, self.security)
        if self.port == 0:
            raise OSError(f"could not bind {role} server to {address}")
        self.host = host
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._stop_hooks: dict[str, list[Callable[[], None]]] = {"before_drain": [],
                                                                  "after_drain": []}
        self._reflection_enabled = False
        self.serving = False
        self.set_serving(False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def service_names(self) -> list[str]:
        return list(self._service_names)

    def set_serving(self, serving: bool) -> None:
        """Flip standard health for the server and every registered service.

        The first switch to SERVING also enables reflection over the registered services.
        """
        if serving and self._stopped.is_set():
            return
        if serving and not self._reflection_enabled:
            self._reflection_enabled = True
            reflection.enable_server_reflection(
                [*self._service_names, reflection.SERVICE_NAME], self.grpc_server
            )
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.serving = serving
        for name in self._service_names:
            if name != health.SERVICE_NAME:
                self.health.set(name, status)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Runs `callback()` once the server has stopped and drained (e.g. to release a
        role's other ranks)."""
        self._stop_hooks["after_drain"].append(callback)

    def local_info(self) -> common_pb2.ServiceInfo | None:
        """The role's own GetInfo answer, called in-process (for the registry heartbeat);
        None until the role has registered a service with GetInfo."""
        for methods in list(self.grpc_server.handlers.values()):
            handler = methods.get("GetInfo")
            if handler is not None and handler.unary_unary is not None:
                return handler.unary_unary(common_pb2.GetInfoRequest(), None)
        return None

    def start(self) -> None:
        self._server.start()
        self.grpc_server.started = True
        log.info("%s listening on %s (%s)", self.role, self.address, self.security.describe())

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """`hook` runs when the server stops, after health turns NOT_SERVING and before the
        server closes: a role that owns work (the coordinator's runs) ends it there."""
        self._stop_hooks["before_drain"].append(hook)

    def _run_stop_hooks(self, when: str) -> None:
        """One failing hook must not keep the server up or skip the others."""
        for hook in self._stop_hooks[when]:
            try:
                hook()
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.exception("%s: stop hook (%s) failed", self.role, when)

    def stop(self, grace_s: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        self._run_stop_hooks("before_drain")
        self.health.enter_graceful_shutdown()
        self._server.stop(self.grace_s if grace_s is None else grace_s).wait()
        self._run_stop_hooks("after_drain")
        log.info("%s stopped", self.role)
        self._finished.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the server gracefully from the main thread's wait."""

        def _on_signal(signum, _frame):
            log.info("%s got %s, shutting down", self.role, signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="shutdown", daemon=True).start()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    def wait_for_termination(self) -> None:
        """Blocks until stop() ran to its end (e.g. from a signal handler), stop callbacks
        included."""
        while not self._stopped.wait(0.5):
            pass
        self._server.wait_for_termination()
        self._finished.wait()
