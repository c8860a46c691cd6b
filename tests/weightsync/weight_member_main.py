"""A stand-alone member of a weight group for the abort tests, one process per rank.

    python weight_member_main.py send PORT WORLD NUM_BUCKETS
        rank 0: hosts the store, sends one version of NUM_BUCKETS 8 MiB tensors (one per
        bucket); prints "sent SECONDS" or "failed SECONDS MESSAGE", then stays (its sockets
        open) until its stdin closes.
    python weight_member_main.py die PORT WORLD RANK NUM_BUCKETS
        joins as RANK and SIGKILLs itself once the first bucket of the session arrived.
A last argument 1 offers/takes the same-host shared-memory plane (`weightsync.shm`): the
session (NUM_BUCKETS > 2) then passes through its ring of two 8 MiB slots.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from quartet.weightsync import (
    WeightGroupConfig,
    WeightReceiver,
    WeightSender,
    WeightSyncError,
    init_weight_group,
    specs_of,
)

BUCKET_BYTES = 8 << 20
GROUP_TIMEOUT_S = 120.0  # far above what an abort may take: the tests tell them apart
PROMPT_S = 10.0
"""What 'within seconds' means in the tests (an abort is read every 0.5 s; the host is
shared)."""


def tensors(num_buckets: int) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.full((BUCKET_BYTES // 4,), float(i)) for i in range(num_buckets)}


def config(port: int, world: int, rank: int, shm: int = 0) -> WeightGroupConfig:
    return WeightGroupConfig("127.0.0.1", port, world, rank, timeout_s=GROUP_TIMEOUT_S,
                             shared_memory=bool(shm))


def send(port: int, world: int, num_buckets: int, shm: int = 0) -> None:
    group = init_weight_group(config(port, world, 0, shm))
    start = time.monotonic()
    try:
        WeightSender(group, BUCKET_BYTES).send(1, tensors(num_buckets))
    except WeightSyncError as exc:
        print(f"failed {time.monotonic() - start:.2f} {exc}", flush=True)
    else:
        print(f"sent {time.monotonic() - start:.2f}", flush=True)
    sys.stdin.read()  # a peer leaves because the group was aborted, not because we exited


def die(port: int, world: int, rank: int, num_buckets: int, shm: int = 0) -> None:
    group = init_weight_group(config(port, world, rank, shm))
    if shm and group.segment is None:
        sys.exit("die: the group formed without its shared-memory segment")
    for _name, _tensor in WeightReceiver(group).receive(1, specs_of(tensors(num_buckets))):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"send": send, "die": die}[mode](*args)
