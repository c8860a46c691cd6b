"""Surviving a role process that dies mid-run: restart it, bring it back in step, go on.

When a role call fails, the PPO loop asks `RoleRecovery.repair`: if a process the launcher
started has exited, it is restarted (at most `max_restarts` times per process) and what the
loop must do next is answered:

- a rollout replica comes back with the current weights (`WeightSync.bring_up`, alone) and
  the interrupted phase is re-run; one that cannot come back is retired while at least
  `min_rollout_replicas` remain;
- a reference or reward replica is stateless: the interrupted phase is re-run;
- the actor or critic lost its state: the loop rewinds to the last checkpoint (both reload
  it, the coordinator restores its state, every replica gets that policy) and replays the
  same data, so no update is lost or applied twice.

A failure with no dead process behind it is not ours to repair: the error is raised again.
The launcher is an interface (`RoleLauncher`): the local launcher implements it, and any
launcher that can tell which process ended and start it again can.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from quartet.clients.base import RoleCallError

log = logging.getLogger("quartet.coordinator")

TRAINABLE = ("actor", "critic")


class RoleLauncher(Protocol):
    """What a launcher offers for supervision (see quartet/launch/local.py)."""

    def exited(self) -> list[str]: ...
    def restart(self, name: str, timeout_s: float = 300.0) -> str: ...
    def retire(self, name: str) -> None: ...
    def role_of(self, name: str) -> str: ...
    def address_of(self, name: str) -> str: ...
    def names(self) -> list[str]: ...


class ReplicaWeights(Protocol):
    """The weight sync's recovery side (services/coordinator/weight_sync.py)."""

    def bring_up(self, address: str) -> None: ...
    def retire(self, address: str) -> None: ...
    def reform(self) -> None: ...


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3
    """Restarts of one role process before it counts as gone."""
    min_rollout_replicas: int = 1
    """Rollout replicas the run needs; fewer and it fails."""
    start_timeout_s: float = 600.0
    """How long a restarted process may take to report SERVING."""
    exit_wait_s: float = 5.0
    """How long to wait, after a failed call, for the dead process to be seen exited."""
    reconnect_wait_s: float = 2.5
    """A client's channel to a process that just came back may still be in its reconnect
    backoff (at most 2 s, quartet/clients/channel.py): UNAVAILABLE from it is retried after
    this long, a few times, instead of ending the run."""
    reconnect_tries: int = 4


@dataclass
class Repair:
    """What `repair` did, and what the loop must do about it."""

    restarted: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    """Addresses of rollout replicas dropped for good."""
    rewind: bool = False
    """The actor or critic restarted: rewind to the last checkpoint."""


class RoleRecovery:
    def __init__(self, launcher: RoleLauncher, policy: RestartPolicy,
                 weights: ReplicaWeights | None = None) -> None:
        self.launcher = launcher
        self.policy = policy
        self.weights = weights
        self.restarts: Counter[str] = Counter()
        self.history: list[Repair] = []
        self._reconnecting: Counter[str] = Counter()
        """Addresses restarted, and how many UNAVAILABLE answers they may still give."""

    def _exited(self) -> list[str]:
        deadline = time.monotonic() + self.policy.exit_wait_s
        while True:
            dead = self.launcher.exited()
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(0.1)

    def _live_rollouts(self) -> int:
        return sum(1 for n in self.launcher.names() if self.launcher.role_of(n) == "rollout")

    def _restart(self, name: str, error: RoleCallError) -> bool:
        """Restarts `name` within its budget; False when the budget is spent."""
        while self.restarts[name] < self.policy.max_restarts:
            self.restarts[name] += 1
            log.warning("%s died (%s); restart %d of %d", name, error, self.restarts[name],
                        self.policy.max_restarts)
            try:
                self.launcher.restart(name, self.policy.start_timeout_s)
                return True
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.warning("restarting %s failed: %s", name, exc)
        return False

    def repair(self, error: RoleCallError) -> Repair:
        dead = self._exited()
        if not dead:
            if (error.code == grpc.StatusCode.UNAVAILABLE
                    and self._reconnecting[error.address] > 0):
                self._reconnecting[error.address] -= 1
                log.info("%s is back but its channel is still reconnecting; re-running",
                         error.address)
                time.sleep(self.policy.reconnect_wait_s)
                return Repair()
            raise error
        result = Repair()
        came_back: list[str] = []
        for name in dead:
            role = self.launcher.role_of(name)
            address = self.launcher.address_of(name)
            if self._restart(name, error):
                result.restarted.append(name)
                self._reconnecting[address] = self.policy.reconnect_tries
                if role in TRAINABLE:
                    result.rewind = True
                elif role == "rollout":
                    came_back.append(address)
                continue
            if role == "rollout" and self._live_rollouts() - 1 >= self.policy.min_rollout_replicas:
                log.warning("retiring rollout %s after %d failed restarts; the run goes on "
                            "with the other replicas", name, self.restarts[name])
                self.launcher.retire(name)
                result.retired.append(address)
                if self.weights is not None:
                    self.weights.retire(address)
                continue
            raise RuntimeError(
                f"{role} {name} at {address} died and did not come back after "
                f"{self.restarts[name]} restart(s) (--restart.max_restarts "
                f"{self.policy.max_restarts}); see its log under the run's logs/ "
                f"directory. Last failure: {error}") from error
        if self.weights is not None:
            if result.rewind:
                # The rewind re-forms the group and sends the checkpoint's policy to everyone.
                self.weights.reform()
            else:
                for address in came_back:
                    self.weights.bring_up(address)
        self.history.append(result)
        return result
