"""Process-group setup that works under deepspeed, torchrun, or as one plain process.

Why: without a launcher DeepSpeed falls back to MPI discovery and fails; a single process
should simply become rank 0 of a world of 1 (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from quartet.engines.torch_extensions import use_venv_extensions_dir

__all__ = ["World", "barrier", "init_distributed"]


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> World:
    """Join (or create) the default process group and return this process's :class:`World`.

    Launched (`RANK` and `WORLD_SIZE` set by torchrun, deepspeed or quartet's launchers): join
    through the environment's rendezvous. Otherwise this process is a world of one on an
    in-process store: it opens no port and exports no `RANK`/`WORLD_SIZE`/`MASTER_*`, so a
    process it starts (a `quartet` role, a trainer) is not told it belongs to a launched world
    whose store port this process holds (it failed with EADDRINUSE on that port).
    """
    import deepspeed

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's ZeRO-3 reads it
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        use_venv_extensions_dir()  # DeepSpeed builds its CPU comm op here
        if not launched:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend)  # adopts a group already formed
        if backend == "gloo":
            _unlink_shm_allreduce_buffer()
    return World(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shm_allreduce_buffer_path(rank: int) -> Path:
    """The file DeepSpeed's CPU shared-memory allreduce creates for `rank` of this world.

    DeepSpeed (its `shm_comm` op) names it from the uid, MASTER_ADDR and MASTER_PORT.
    """
    addr = os.environ.get("MASTER_ADDR", "")
    port = os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def _unlink_shm_allreduce_buffer() -> None:
    """Remove this rank's DeepSpeed shared-memory allreduce file once every rank has mapped it.

    Why: when all ranks are on one host (the deepspeed launcher sets LOCAL_SIZE = WORLD_SIZE)
    DeepSpeed's CPU allreduce creates a ~66 MB file per rank in /dev/shm and never unlinks
    it, so every such run left RAM-backed files behind for good (72 of them, 4.7 GB, had
    piled up on the development machine). Each rank maps all its peers' files before
    `init_distributed` returns; after a barrier the names are no longer needed and the
    mappings stay valid until the processes exit.
    """
    local_size = os.environ.get("LOCAL_SIZE")
    if local_size is None or int(local_size) != dist.get_world_size():
        return  # DeepSpeed created no shared-memory buffer
    dist.barrier()  # every rank has mapped every peer's file by now
    # missing when the shm op did not build or load and DeepSpeed fell back to plain gloo
    shm_allreduce_buffer_path(dist.get_rank()).unlink(missing_ok=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
