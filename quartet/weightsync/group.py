"""The weight group: a `torch.distributed` process group between the actor's rank 0 and
every rollout worker, formed from a `TCPStore` so it needs no shared torch world.

The trainer's own world (torchrun/DeepSpeed) and the rollout engines' worlds (vLLM sets up
its own) stay untouched: this group is created directly as a `ProcessGroupGloo` (CPU) or
`ProcessGroupNCCL` (GPU) on a store hosted by rank 0, so processes that were never part of
one world can still broadcast to each other. Same code path on both backends; only the
device of the buffers differs.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger("quartet.weightsync")

BACKENDS = ("gloo", "nccl")
# Bounds a request can ask for: torch's store takes the member count as a C int and its
# timeout in milliseconds; beyond these a request is refused by name, not overflowed.
MAX_WORLD_SIZE = 1 << 16
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def check_group_bounds(world_size: int, timeout_s: float) -> None:
    """ValueError naming `world_size` or `timeout_s` when outside what a group can use."""
    if not 2 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(f"world_size: must be in 2..{MAX_WORLD_SIZE} (a sender and its "
                         f"receivers), got {world_size}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # also refuses NaN
        raise ValueError(f"timeout_s: must be in (0, {MAX_TIMEOUT_S:g}], got {timeout_s}")


@dataclass(frozen=True)
class WeightGroupConfig:
    """Where and how to form the group. Rank 0 is the sender (actor); it hosts the store."""

    master_address: str
    master_port: int
    world_size: int
    rank: int
    backend: str = "gloo"
    group_name: str = "weights"
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.master_address:
            raise ValueError("master_address: must not be empty")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master_port: must be in 1..65535, got {self.master_port}")
        check_group_bounds(self.world_size, self.timeout_s)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: must be in 0..{self.world_size - 1}, got {self.rank}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, "
                             f"got {self.backend!r}")

    def with_rank(self, rank: int) -> WeightGroupConfig:
        return WeightGroupConfig(self.master_address, self.master_port, self.world_size, rank,
                                 self.backend, self.group_name, self.timeout_s)


class WeightGroup:
    """A formed group: `broadcast(tensor)` from rank 0, buffers on `device`."""

    def __init__(self, config: WeightGroupConfig, pg: dist.ProcessGroup, device: torch.device,
                 store: dist.Store) -> None:
        self.config = config
        self.device = device
        self._pg = pg
        self._store = store  # kept alive: rank 0 hosts it

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def world_size(self) -> int:
        return self.config.world_size

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """In-place broadcast of `tensor` from `src` to every member (blocking)."""
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        self._pg.broadcast([tensor], opts).wait()

    def barrier(self) -> None:
        self.broadcast(torch.zeros(1, dtype=torch.int64, device=self.device))

    def close(self) -> None:
        shutdown = getattr(self._pg, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # noqa: BLE001 - best effort on teardown
                log.debug("weight group shutdown failed", exc_info=True)
        self._pg = None  # type: ignore[assignment]


ADVERTISE_HOST_ENV = "QUARTET_ADVERTISE_HOST"


def advertised_host() -> str:
    """The address other hosts reach this process at: `QUARTET_ADVERTISE_HOST` (launchers
    set it: the node's IP under Ray) or loopback."""
    return os.environ.get(ADVERTISE_HOST_ENV) or "127.0.0.1"


def check_local_address(address: str) -> None:
    """ValueError naming `master_address` unless `address` resolves to an address this host
    can bind (a name or IP of one of its interfaces)."""
    try:
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(
            address, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ValueError(f"master_address: {address[:80]!r} is not an address of this host "
                         f"({type(exc).__name__}: {exc})") from exc


def host_store(address: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a port the OS picks on this host (read `.port`).

    Opened before any member joins, so the address and port come from the sender's host
    and the coordinator may run anywhere. `address` must be one of this host's own: the
    store's own client connects to it, and to a name that does not resolve here it would
    retry for the whole `timeout_s`."""
    check_group_bounds(world_size, timeout_s)
    check_local_address(address)
    return dist.TCPStore(address, 0, world_size, is_master=True,
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def init_weight_group(config: WeightGroupConfig, device: torch.device | None = None,
                      store: dist.Store | None = None) -> WeightGroup:
    """Joins (rank > 0) or hosts (rank 0) the group; blocks until all `world_size` joined.

    Every member must call this concurrently (e.g. the coordinator asks the actor and each
    rollout replica at the same time). Rank 0 may pass the `store` it opened with
    `host_store` (its port is then `config.master_port`). `device` defaults to the current
    CUDA device for NCCL and to CPU for gloo.
    """
    timeout = timedelta(seconds=config.timeout_s)
    store = store or dist.TCPStore(
        config.master_address,
        config.master_port,
        config.world_size,
        is_master=config.rank == 0,
        timeout=timeout,
        wait_for_workers=False,
    )
    prefixed = dist.PrefixStore(f"quartet/{config.group_name}/", store)
    if config.backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend: nccl needs a CUDA device; use gloo on CPU")
        device = device or torch.device("cuda", torch.cuda.current_device())
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg: dist.ProcessGroup = dist.ProcessGroupNCCL(
            prefixed, config.rank, config.world_size, opts
        )
    else:
        device = device or torch.device("cpu")
        pg = dist.ProcessGroupGloo(prefixed, config.rank, config.world_size, timeout)
    group = WeightGroup(config, pg, device, store)
    # One collective proves every member is there (NCCL connects lazily otherwise).
    group.barrier()
    log.info("weight group %s formed: rank %d of %d (%s, %s)", config.group_name, config.rank,
             config.world_size, config.backend, device)
    return group


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (for rank 0's store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
