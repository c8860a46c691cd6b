"""Where every service rank runs: a placement plan as plain data, computed without Ray.

Why plain data: the launchers (local processes, Ray) only realise a plan and report
addresses, so the plan itself — which role gets which devices on which node, which roles
share devices — is testable here, printed at start and written to `placement.json`.

Vocabulary (OpenRLHF's, in quartet's words):

- a *service* is one endpoint the coordinator talks to (`actor`, `reference`, `reward0`,
  `rollout1`); it has one or more *ranks*, each an OS process. A trainable role has
  `num_nodes x num_gpus_per_node` ranks of one device each; a rollout engine is one rank
  holding `tensor_parallel_size` devices (vLLM spawns its TP workers itself);
- a *pool* is a set of device slots (a Ray placement group's bundles): one per service, or
  one shared by colocated services, each of which then gets a fraction of every device;
- a *device* is a GPU index on its node, or on a host without GPUs a "slot": one CPU
  process (gloo) standing where a GPU would be.

Pools are packed first-fit onto nodes of `devices_per_node` slots (each node-chunk of a pool
stays on one node); with a Ray cluster the realised nodes are what Ray chose, and
`placement.json` records those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = [
    "PlacementError",
    "PlacementPlan",
    "PoolPlacement",
    "RankPlacement",
    "ServiceDemand",
    "ServicePlacement",
    "plan_placement",
]


class PlacementError(ValueError):
    """The flags ask for a placement that cannot exist; the message names the flag."""


@dataclass(frozen=True)
class ServiceDemand:
    """What one service asks for.

    `num_nodes x num_gpus_per_node` ranks of `devices_per_rank` devices each; a service with
    `num_gpus_per_node == 0` needs no device (a rule reward, an HTTP proxy) and runs as one
    rank on the first node.
    """

    name: str
    role: str
    num_nodes: int = 1
    num_gpus_per_node: int = 1
    devices_per_rank: int = 1
    flag: str = ""
    """Flag prefix that sets this demand, for error messages (e.g. ``--actor``)."""

    def __post_init__(self) -> None:
        where = self.flag or self.name
        if self.num_nodes < 1:
            raise PlacementError(f"{where}.num_nodes: must be >= 1, got {self.num_nodes}")
        if self.num_gpus_per_node < 0:
            raise PlacementError(f"{where}.num_gpus_per_node: must be >= 0, "
                                 f"got {self.num_gpus_per_node}")
        if self.devices_per_rank < 1:
            raise PlacementError(f"{where}: devices per rank must be >= 1, "
                                 f"got {self.devices_per_rank}")
        if self.num_gpus_per_node and self.num_gpus_per_node % self.devices_per_rank:
            raise PlacementError(f"{where}: {self.num_gpus_per_node} devices per node do not "
                                 f"split into ranks of {self.devices_per_rank}")

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.num_gpus_per_node

    @property
    def num_ranks(self) -> int:
        return max(self.num_devices // self.devices_per_rank, 1)


@dataclass(frozen=True)
class RankPlacement:
    """One process of a service."""

    rank: int
    node: str
    """Logical node (``node0``...) in a plan; the node's IP once a launcher realised it."""
    devices: tuple[int, ...]
    """GPU indices on the node (or CPU slots on a host without GPUs); empty: no device."""
    local_rank: int = 0
    """Index of this rank's first device among the service's devices on the same node: the
    process sees those devices (`CUDA_VISIBLE_DEVICES`) and takes this one."""
    address: str = ""
    """host:port of the gRPC endpoint (rank 0), or the host (ranks > 0); set by a launcher."""
    pid: int | None = None


@dataclass(frozen=True)
class ServicePlacement:
    name: str
    role: str
    pool: str
    gpu_fraction: float
    """Share of each of its devices (1.0 alone, 1/k when k services share a pool)."""
    ranks: tuple[RankPlacement, ...]
    colocated_with: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def address(self) -> str:
        return self.ranks[0].address

    @property
    def devices_per_rank(self) -> int:
        return len(self.ranks[0].devices)

    def visible_devices(self, rank: RankPlacement) -> tuple[int, ...]:
        """Devices of this service on `rank`'s node, in order (what the rank is shown)."""
        return tuple(d for r in self.ranks if r.node == rank.node for d in r.devices)


@dataclass(frozen=True)
class PoolPlacement:
    """A set of device slots, e.g. one Ray placement group: bundle i is (node, device)."""

    name: str
    members: tuple[str, ...]
    bundles: tuple[tuple[str, int], ...]
    bundles_per_node: int

    @property
    def num_nodes(self) -> int:
        return len({n for n, _ in self.bundles})


@dataclass(frozen=True)
class PlacementPlan:
    device_kind: str
    """``cuda`` (GPUs) or ``cpu`` (each slot is one CPU process)."""
    devices_per_node: int
    pools: tuple[PoolPlacement, ...]
    services: tuple[ServicePlacement, ...]
    launcher: str = ""
    nodes: Mapping[str, str] = field(default_factory=dict)
    """Logical node -> host, filled by a launcher."""

    def service(self, name: str) -> ServicePlacement:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"placement: no service named {name!r}")

    def of_role(self, role: str) -> list[ServicePlacement]:
        return [s for s in self.services if s.role == role]

    def with_service(self, updated: ServicePlacement) -> PlacementPlan:
        return replace(self, services=tuple(updated if s.name == updated.name else s
                                            for s in self.services))

    @property
    def num_nodes(self) -> int:
        return len({r.node for s in self.services for r in s.ranks})

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        return {
            "launcher": self.launcher,
            "device_kind": self.device_kind,
            "devices_per_node": self.devices_per_node,
            "nodes": dict(self.nodes),
            "pools": [asdict(p) for p in self.pools],
            "services": {
                s.name: {
                    "role": s.role, "pool": s.pool, "gpu_fraction": s.gpu_fraction,
                    "colocated_with": list(s.colocated_with), "world_size": s.world_size,
                    "address": s.address,
                    "ranks": [{"rank": r.rank, "node": r.node, "devices": list(r.devices),
                               "local_rank": r.local_rank, "address": r.address,
                               "pid": r.pid} for r in s.ranks],
                } for s in self.services
            },
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def table(self) -> str:
        """A human-readable table: one line per service."""
        unit = "gpu" if self.device_kind == "cuda" else "slot"
        lines = [f"placement ({self.device_kind}, {self.num_nodes} node(s), "
                 f"{self.devices_per_node} {unit}s per node):"]
        for s in self.services:
            by_node: dict[str, list[int]] = {}
            for r in s.ranks:
                by_node.setdefault(r.node, []).extend(r.devices)
            where = "; ".join(f"{self.nodes.get(n, n)} {unit}s {_ranges(d)}" if d else
                              f"{self.nodes.get(n, n)} (no device)"
                              for n, d in by_node.items())
            share = f" x{s.gpu_fraction:g}" if s.gpu_fraction < 1 else ""
            extra = f" shared with {', '.join(s.colocated_with)}" if s.colocated_with else ""
            addr = f" at {s.address}" if s.address else ""
            lines.append(f"  {s.name:<10} {s.world_size} rank(s): {where}{share}{extra}{addr}")
        return "\n".join(lines)


def _ranges(devices: Iterable[int]) -> str:
    ds = sorted(set(devices))
    if ds and ds == list(range(ds[0], ds[-1] + 1)) and len(ds) > 1:
        return f"{ds[0]}-{ds[-1]}"
    return ",".join(map(str, ds))


def plan_placement(
    demands: Sequence[ServiceDemand],
    colocate: Mapping[str, Sequence[str]] | None = None,
    devices_per_node: int | None = None,
    device_kind: str = "cpu",
) -> PlacementPlan:
    """Lays every service out on pools and pools onto nodes.

    `colocate`: groups of service names that share one pool, keyed by the option that
    asked for it (named in errors). Within a group every member
    spans the same devices except rollout engines, which split the pool among themselves
    in order (engine i takes slots i*TP..(i+1)*TP-1), as OpenRLHF's colocate_all_models
    does. `devices_per_node`: slots per node; None packs everything onto one node.
    """
    by_name = {d.name: d for d in demands}
    if len(by_name) != len(demands):
        raise PlacementError("placement: two services share a name")
    groups: list[list[ServiceDemand]] = []
    grouped: set[str] = set()
    flags: list[str] = []
    for flag, names in (colocate or {}).items():
        members = [by_name[n] for n in names if n in by_name and by_name[n].num_devices]
        if len(members) < 2:
            continue
        if grouped & {m.name for m in members}:
            raise PlacementError(f"{flag}: a service is in two colocation groups: {names}")
        grouped |= {m.name for m in members}
        groups.append(members)
        flags.append(flag)
    for d in demands:
        if d.name not in grouped:
            groups.append([d])
            flags.append(d.flag or d.name)

    pool_specs = [_pool_shape(g, f) for g, f in zip(groups, flags, strict=True)]
    need = max((per_node for _, per_node, _ in pool_specs), default=1)
    if devices_per_node is None:
        devices_per_node = max(sum(n * p for n, p, _ in pool_specs), 1)
    if need > devices_per_node:
        raise PlacementError(f"placement: a pool needs {need} devices on one node, nodes "
                             f"have {devices_per_node}")

    free: list[int] = []  # free devices per node; devices are handed out in order
    pools: list[PoolPlacement] = []
    services: list[ServicePlacement] = []
    for group, (num_nodes, per_node, name) in zip(groups, pool_specs, strict=True):
        bundles: list[tuple[str, int]] = []
        for _ in range(num_nodes if per_node else 0):
            node = next((i for i, f in enumerate(free) if f >= per_node), None)
            if node is None:
                free.append(devices_per_node)
                node = len(free) - 1
            first = devices_per_node - free[node]
            bundles += [(f"node{node}", first + k) for k in range(per_node)]
            free[node] -= per_node
        pool = PoolPlacement(name, tuple(m.name for m in group), tuple(bundles), per_node)
        pools.append(pool)
        services += _lay_out(group, pool)
    return PlacementPlan(device_kind, devices_per_node, tuple(pools), tuple(services))


def _pool_shape(group: list[ServiceDemand], flag: str) -> tuple[int, int, str]:
    """(num_nodes, devices per node, name) of the pool a colocation group shares."""
    name = "+".join(m.name for m in group)
    if len(group) == 1:
        d = group[0]
        return d.num_nodes if d.num_gpus_per_node else 0, d.num_gpus_per_node, name
    trainers = [m for m in group if m.role != "rollout"]
    engines = [m for m in group if m.role == "rollout"]
    shapes = {(m.num_nodes, m.num_gpus_per_node) for m in trainers}
    if len(shapes) > 1:
        asked = ", ".join(f"{m.flag or m.name} {m.num_nodes}x{m.num_gpus_per_node}"
                          for m in trainers)
        raise PlacementError(f"{flag}: colocated services must ask for the same "
                             f"num_nodes x num_gpus_per_node; got {asked}")
    num_nodes, per_node = shapes.pop() if shapes else (1, sum(e.num_devices for e in engines))
    if engines:
        total = sum(e.num_devices for e in engines)
        if total != num_nodes * per_node:
            raise PlacementError(
                f"{flag}: needs --vllm.num_engines x "
                f"--vllm.tensor_parallel_size = {total} to equal the actor's devices "
                f"({num_nodes} x {per_node})")
        tp = engines[0].devices_per_rank
        if per_node % tp:
            raise PlacementError(f"{flag}: --vllm.tensor_parallel_size {tp} does not divide "
                                 f"the {per_node} devices per node of the shared pool")
    return num_nodes, per_node, name


def _lay_out(group: list[ServiceDemand], pool: PoolPlacement) -> list[ServicePlacement]:
    # Colocated rollouts split the pool between them; everyone else spans it all.
    layers = len([m for m in group if m.role != "rollout"]) + (
        1 if any(m.role == "rollout" for m in group) else 0)
    fraction = 1.0 / layers if layers > 1 else 1.0
    fraction = math.floor(fraction * 1e4) / 1e4  # Ray accepts 4 decimals
    out = []
    engine_offset = 0
    for d in group:
        if not d.num_devices:
            out.append(ServicePlacement(d.name, d.role, pool.name, 1.0,
                                        (RankPlacement(0, "node0", ()),)))
            continue
        if d.role == "rollout" and len(group) > 1:
            slots = pool.bundles[engine_offset:engine_offset + d.num_devices]
            engine_offset += d.num_devices
        else:
            slots = pool.bundles[:d.num_devices]
        ranks = []
        for r in range(d.num_ranks):
            chunk = slots[r * d.devices_per_rank:(r + 1) * d.devices_per_rank]
            node = chunk[0][0]
            before = sum(len(x.devices) for x in ranks if x.node == node)
            ranks.append(RankPlacement(r, node, tuple(dev for _, dev in chunk), before))
        others = tuple(m.name for m in group if m.name != d.name)
        out.append(ServicePlacement(d.name, d.role, pool.name, fraction, tuple(ranks), others))
    return out


def load_placement(path: str | Path) -> dict:
    """The JSON a run wrote (for tests and tools)."""
    return json.loads(Path(path).read_text())
