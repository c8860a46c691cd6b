"""`--launcher local`: realises a placement plan as processes on this host.

Every rank is a `quartet serve <role>` process started by `LocalCluster`; each service gets
its own devices (`CUDA_VISIBLE_DEVICES`) and shares them only with the services the plan
colocates it with. A plan that spans more than one node cannot run here: it says so and
names `--launcher ray`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from quartet.launch.launcher import ServiceCommand, device_env
from quartet.launch.local import LocalCluster
from quartet.launch.placement import PlacementError, PlacementPlan
from quartet.launch.ranks import rank_name, start_role_ranks

log = logging.getLogger("quartet.launch")

HOST = "127.0.0.1"


def local_devices() -> tuple[str, int | None]:
    """("cuda", GPUs visible here), or ("cpu", None): CPU slots are not counted."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    return "cpu", None


class LocalLauncher:
    name = "local"

    def __init__(self, log_dir: str | Path, env: dict[str, str] | None = None,
                 service_args: list[str] | None = None) -> None:
        """`service_args` go to every service (`LocalCluster`)."""
        self.cluster = LocalCluster(log_dir, env=env, service_args=service_args)

    def resources(self) -> tuple[str, int | None]:
        return local_devices()

    @property
    def supervisor(self) -> LocalCluster:
        """What restarts a dead role process (RoleRecovery): the cluster of processes."""
        return self.cluster

    def launch(self, plan: PlacementPlan, commands: dict[str, ServiceCommand],
               timeout_s: float) -> PlacementPlan:
        if plan.num_nodes > 1:
            nodes = sorted({r.node for s in plan.services for r in s.ranks} - {"external"})
            if len(nodes) > 1:
                raise PlacementError(
                    f"--launcher local: the placement needs {len(nodes)} nodes of "
                    f"{plan.devices_per_node} devices; this host is one node (use --launcher "
                    "ray, or fewer --<role>.num_gpus_per_node)")
        started = []
        for svc in plan.services:
            if svc.pool == "external":
                continue
            cmd = commands[svc.name]
            start_role_ranks(self.cluster, cmd.role, list(cmd.args), svc.world_size,
                             name=svc.name, env=cmd.env,
                             rank_envs=[device_env(svc, r, plan.device_kind)
                                        for r in svc.ranks])
            started.append(svc.name)
        if started:
            log.info("waiting for %d local services: %s", len(started), ", ".join(started))
            self.cluster.wait_healthy(timeout_s)  # rank 0 of each; fails if any rank exited
        return self.realised(plan)

    def realised(self, plan: PlacementPlan) -> PlacementPlan:
        """The plan with this host's address, ports and pids filled in."""
        procs = self.cluster.services
        out = replace(plan, launcher=self.name, nodes={HOST: HOST})
        for svc in plan.services:
            if svc.pool == "external":
                continue
            ranks = []
            for r in svc.ranks:
                p = procs[rank_name(svc.name, r.rank)]
                addr = p.address if r.rank == 0 else HOST
                ranks.append(replace(r, node=HOST, address=addr, pid=p.process.pid))
            out = out.with_service(replace(svc, ranks=tuple(ranks)))
        return out

    def stop(self) -> dict[str, int | None]:
        return self.cluster.stop()
