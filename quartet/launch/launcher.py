"""What every launcher shares: the command of a service, the devices each rank is shown,
and the interface the coordinator's start-up code talks to.

A multi-rank role is N processes running `quartet serve <role>` with identical flags and
the rendezvous variables of `quartet.launch.ranks` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`); rank 0 serves gRPC for all of them. On GPUs every rank sees
the devices its service holds on its node (`CUDA_VISIBLE_DEVICES`) and takes `LOCAL_RANK`
among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from quartet.launch.placement import PlacementPlan, RankPlacement, ServicePlacement


@dataclass(frozen=True)
class ServiceCommand:
    """How to run one service: `quartet serve <role> <args>` plus extra environment."""

    role: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def device_env(service: ServicePlacement, rank: RankPlacement,
               device_kind: str) -> dict[str, str]:
    """What one rank is shown: on GPUs its service's devices on its node, and (multi-rank)
    its own among them as `LOCAL_RANK`; on CPU nothing."""
    env: dict[str, str] = {}
    if device_kind == "cuda" and rank.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, service.visible_devices(rank)))
    if service.world_size > 1:
        local = [r for r in service.ranks if r.node == rank.node]
        env.update(LOCAL_RANK=str(rank.local_rank), LOCAL_WORLD_SIZE=str(len(local)))
    return env


class Launcher(Protocol):
    """Realises a placement plan and reports where each service answers.

    The coordinator sees only the returned plan (addresses); it never holds a Ray handle
    or a process.
    """

    name: str

    def resources(self) -> tuple[str, int | None]:
        """(device kind, devices per node) of what this launcher places on."""
        ...

    def launch(self, plan: PlacementPlan, commands: dict[str, ServiceCommand],
               timeout_s: float) -> PlacementPlan:
        """Starts every planned service, waits until rank 0 of each is SERVING, and returns
        the plan with nodes, devices, pids and addresses filled in."""
        ...

    @property
    def supervisor(self):
        """The object a supervisor (RoleRecovery) restarts processes through: names(),
        exited(), role_of(), address_of(), restart(), retire()."""
        ...

    def stop(self) -> dict[str, int | None]:
        ...
