"""A service's registration: register when serving starts, renew on a heartbeat (with fresh
weight version, health and load), deregister on stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from quartet.registry.redis_registry import Registry, ServiceRecord
from quartet.v1 import common_pb2

log = logging.getLogger("quartet.registry")


class RegistryHeartbeat:
    """Renews `role/replica` every `interval_s` with a TTL of `ttl_s`, from a daemon thread.

    `serving()` and `info()` are read on each beat: health follows the server (NOT_SERVING
    while loading and while draining), weight version and load come from the role's GetInfo.
    """

    def __init__(self, registry: Registry, role: str, replica: str, address: str,
                 serving: Callable[[], bool],
                 info: Callable[[], common_pb2.ServiceInfo | None],
                 ttl_s: float = 10.0, interval_s: float | None = None) -> None:
        self.registry = registry
        self.role, self.replica, self.address = role, replica, address
        self.serving = serving
        self.info = info
        self.ttl_s = ttl_s
        self.interval_s = interval_s or ttl_s / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-heartbeat",
                                        daemon=True)

    def record(self) -> ServiceRecord:
        info = self.info() if self.serving() else None
        return ServiceRecord(
            role=self.role, replica=self.replica, address=self.address,
            weight_version=info.policy_version if info is not None else -1,
            health="SERVING" if self.serving() else "NOT_SERVING",
            load=info.inflight_requests if info is not None else 0)

    def beat(self) -> None:
        self.registry.register(self.record(), self.ttl_s)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                if failing:
                    log.info("registry %s reachable again", self.registry.url)
                failing = False
            except Exception as exc:  # noqa: BLE001 - keep serving; the TTL says we are gone
                if not failing:
                    log.warning("registry %s: heartbeat failed: %s", self.registry.url, exc)
                failing = True
            self._stop.wait(self.interval_s)

    def start(self) -> RegistryHeartbeat:
        self._thread.start()
        log.info("registered %s/%s at %s in %s (ttl %.0fs)", self.role, self.replica,
                 self.address, self.registry.url, self.ttl_s)
        return self

    def stop(self) -> None:
        """Stops beating and removes the entry (the coordinator stops using it at once)."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            self.registry.deregister(self.role, self.replica)
            log.info("deregistered %s/%s", self.role, self.replica)
        except Exception as exc:  # noqa: BLE001 - the TTL expires it anyway
            log.warning("registry %s: deregister failed: %s", self.registry.url, exc)
