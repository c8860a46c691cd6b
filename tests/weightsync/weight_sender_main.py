"""A stand-alone actor rank 0 for the tests: joins the group and sends versions of
deterministic tensors.
Usage: python weight_sender_main.py PORT WORLD VERSION[,VERSION...] [BUCKET_BYTES [SHM]]
(SHM 1: offer the same-host shared-memory plane).
"""

from __future__ import annotations

import sys

import torch

from quartet.weightsync import WeightGroupConfig, WeightSender, init_weight_group


def make_tensors(version: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(version)
    return {
        "a.weight": torch.randn(33, 17, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "c.scalar": torch.tensor(float(version)),
        "d.mask": torch.rand(7, 3, generator=g) > 0.5,
        "e.empty": torch.zeros(0, 4),
        "f.big": torch.randn(300, 64, generator=g, dtype=torch.float16),
    }


def main() -> None:
    port, world = int(sys.argv[1]), int(sys.argv[2])
    versions = [int(v) for v in sys.argv[3].split(",")]
    bucket_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    shared_memory = len(sys.argv) > 5 and sys.argv[5] == "1"
    group = init_weight_group(WeightGroupConfig("127.0.0.1", port, world, 0, timeout_s=60,
                                                shared_memory=shared_memory))
    print(f"formed shm={int(group.segment is not None)}", flush=True)
    sender = WeightSender(group, bucket_bytes=bucket_bytes)
    for v in versions:
        stats = sender.send(v, make_tensors(v))
        print(f"sent {v} {stats.num_buckets}", flush=True)
    group.close()


if __name__ == "__main__":
    main()
