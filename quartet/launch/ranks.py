"""Starting the N ranks of one multi-rank role (actor, critic) as local processes.

The contract every launcher follows (local here, Ray in its own launcher): rank k of a role
with N ranks is a `quartet serve <role>` process with the role's flags and

    RANK=k  WORLD_SIZE=N  LOCAL_RANK=<k on its node>  MASTER_ADDR  MASTER_PORT

(the role's own rendezvous; never shared with another role or with the weight group), plus
`CUDA_VISIBLE_DEVICES` chosen by the launcher. Rank 0 binds the gRPC port and writes the
port file; it reports SERVING once every rank joined. Ranks > 0 bind nothing and exit when
rank 0 stops or dies.
"""

from __future__ import annotations

from quartet.launch.local import LocalCluster, LocalService
from quartet.ports import free_port


def rank_env(rank: int, world_size: int, master_addr: str, master_port: int,
             local_rank: int | None = None) -> dict[str, str]:
    """The rendezvous environment of one rank (`local_rank` defaults to `rank`: one node)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in 0..{world_size - 1}, got {rank}")
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank if local_rank is None else local_rank),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


def rank_name(name: str, rank: int) -> str:
    """Rank 0 keeps the service's name (its log, port file, address); rank k is `name.rank<k>`."""
    return name if rank == 0 else f"{name}.rank{rank}"


def start_role_ranks(cluster: LocalCluster, role: str, args: list[str], world_size: int,
                     name: str | None = None, env: dict[str, str] | None = None,
                     rank_envs: list[dict[str, str]] | None = None) -> list[LocalService]:
    """Starts `world_size` local ranks of `role` on this host; returns them in rank order.

    `cluster.wait_healthy()` then waits for rank 0 (the only one with a port) and fails if
    any rank exited. `rank_envs[k]` adds per-rank variables (e.g. CUDA_VISIBLE_DEVICES).
    """
    if world_size < 1:
        raise ValueError(f"world_size: must be >= 1, got {world_size}")
    if rank_envs is not None and len(rank_envs) != world_size:
        raise ValueError(f"rank_envs: {len(rank_envs)} entries for {world_size} ranks")
    name = name or role
    if world_size == 1:
        return [cluster.start(role, args, name=name, env={**(env or {}),
                                                          **(rank_envs or [{}])[0]})]
    port = free_port("127.0.0.1")
    return [cluster.start(role, args, name=rank_name(name, k),
                          env={**(env or {}), **rank_env(k, world_size, "127.0.0.1", port),
                               **(rank_envs[k] if rank_envs else {})},
                          serves_grpc=k == 0)
            for k in range(world_size)]
