"""Cluster mode: which replicas the coordinator uses, read from the registry.

At start, `discover` waits until every role the job needs has a SERVING replica. Before each
iteration, `RolloutMembership` compares the registry's rollout replicas with the ones in use:
a replica that deregistered, expired or fails its health check is dropped; a new one is first
brought to the current policy version (its weights pushed to it alone), then joins the
round-robin from this iteration on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from quartet.clients.health import health_status
from quartet.registry import Registry, ServiceRecord

log = logging.getLogger("quartet.coordinator")
R = TypeVar("R")
"""The loop's handle on one rollout replica."""


def discover(registry: Registry, roles: Sequence[str], timeout_s: float,
             poll_s: float = 1.0) -> dict[str, list[ServiceRecord]]:
    """SERVING replicas of each role; waits up to `timeout_s` for every role to have one."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {role: [r for r in registry.services(role) if r.serving] for role in roles}
        missing = [role for role, records in found.items() if not records]
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"registry {registry.url}: no SERVING replica of "
                               f"{', '.join(missing)} after {timeout_s:.0f}s (is each "
                               "service started with --registry?)")
        time.sleep(poll_s)


class RolloutMembership(Generic[R]):
    """Keeps the rollout replica list in step with the registry, between iterations.

    `make_replica(record)` builds the loop's client for a new replica; `catch_up(client,
    version)` brings it to `version`; `on_change(replicas)` tells the weight sync who is in.
    """

    def __init__(self, registry: Registry, replicas: dict[str, R],
                 make_replica: Callable[[ServiceRecord], R],
                 catch_up: Callable[[R, int], float],
                 on_change: Callable[[list[R]], None],
                 health_timeout_s: float = 2.0) -> None:
        self.registry = registry
        self.replicas = dict(replicas)
        self.make_replica = make_replica
        self.catch_up = catch_up
        self.on_change = on_change
        self.health_timeout_s = health_timeout_s

    def healthy(self, record: ServiceRecord) -> bool:
        """Registered is not enough: a killed replica's key outlives it until its TTL."""
        return health_status(record.address, self.health_timeout_s) == "SERVING"

    def __call__(self, iteration: int, version: int) -> tuple[list[R], dict[str, float]]:
        records = {r.replica: r for r in self.registry.services("rollout") if r.serving}
        left = [name for name in self.replicas
                if name not in records or not self.healthy(records[name])]
        for name in left:
            log.warning("iteration %d: rollout replica %s left; continuing without it",
                        iteration + 1, name)
            self.replicas.pop(name)
        joined = 0
        for name, record in records.items():
            if name in self.replicas or name in left:
                continue
            if not self.healthy(record):
                log.info("iteration %d: rollout replica %s is registered but does not answer "
                         "health; not using it", iteration + 1, name)
                continue
            replica = self.make_replica(record)
            seconds = self.catch_up(replica, version)
            log.info("iteration %d: rollout replica %s at %s joined (brought to version %d "
                     "in %.1fs)", iteration + 1, name, record.address, version, seconds)
            self.replicas[name] = replica
            joined += 1
        if not self.replicas:
            raise RuntimeError(f"registry {self.registry.url}: no SERVING rollout replica "
                               f"left at iteration {iteration + 1}")
        current = list(self.replicas.values())
        if left or joined:
            self.on_change(current)
        return current, {"replicas/rollout": float(len(current)), "replicas/joined": float(joined),
                         "replicas/left": float(len(left))}
