"""`python -m bench weight_plane`: the weight sync's data plane alone, broadcast vs shared
memory, on `bench overhead`'s tiny Llama.

This process is rank 0 of two weight groups with one receiver process: one group
broadcasts (`shared_memory=False`), the other passes the payload through /dev/shm. Sessions
alternate between the groups (the same load on both). A session is what a rollout replica
does in a sync, without gRPC and vLLM: `send` on rank 0; on the receiver `receive_staged`,
a copy of every tensor into resident "model" tensors (the load); then one
all-reduce, so the time is send -> loaded on every member. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from quartet.weightsync import (
    WeightGroupConfig,
    WeightReceiver,
    WeightSender,
    free_port,
    init_weight_group,
    receive_staged,
    specs_of,
)

PLANES = ("broadcast", "shared_memory")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench weight_plane", description=__doc__)
    p.add_argument("--sessions", type=int, default=50, help="timed sessions per plane")
    p.add_argument("--warmup", type=int, default=3, help="untimed sessions per plane first")
    p.add_argument("--bucket-mb", type=int, default=64,
                   help="bucket size, MiB (quartet ppo's --vllm.sync_bucket_mb default)")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--receiver", nargs=2, type=int, metavar=("PORT", "PORT"),
                   help=argparse.SUPPRESS)  # internal: this process is the receiver
    return p.parse_args(argv)


def model_weights(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from bench.overhead import bench_model

    model = bench_model(args.hidden_size, args.layers)
    return load_file(str(model / "model.safetensors"))


def group_config(port: int, rank: int, plane: str) -> WeightGroupConfig:
    return WeightGroupConfig("127.0.0.1", port, 2, rank, timeout_s=120, group_name=plane,
                             shared_memory=plane == "shared_memory")


def end_of_session(group) -> None:
    group.all_reduce(torch.zeros(1, dtype=torch.int64))


def receive(args: argparse.Namespace, weights: dict[str, torch.Tensor]) -> None:
    groups = [init_weight_group(group_config(port, 1, plane))
              for port, plane in zip(args.receiver, PLANES, strict=True)]
    model = {name: torch.empty_like(t) for name, t in weights.items()}
    specs = specs_of(weights)
    for version in range(1, 2 * (args.warmup + args.sessions) + 1):
        group = groups[version % 2]
        staged = receive_staged(WeightReceiver(group), version, specs)
        for name, t in staged:
            model[name].copy_(t)
        staged.clear()
        end_of_session(group)
    for group in groups:
        group.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    torch.set_num_threads(1)
    weights = model_weights(args)
    if args.receiver:
        receive(args, weights)
        return 0
    ports = [free_port(), free_port()]
    proc = subprocess.Popen([sys.executable, "-m", "bench", "weight_plane",
                             *argv, "--receiver", *map(str, ports)],
                            env=os.environ)
    groups = [init_weight_group(group_config(port, 0, plane))
              for port, plane in zip(ports, PLANES, strict=True)]
    if groups[1].segment is None:
        print("weight_plane: the receiver did not take the shared segment", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {plane: [] for plane in PLANES}
    for version in range(1, 2 * (args.warmup + args.sessions) + 1):
        group = groups[version % 2]
        start = time.perf_counter()
        WeightSender(group, args.bucket_mb << 20).send(version, weights)
        end_of_session(group)
        if version > 2 * args.warmup:
            times[PLANES[version % 2]].append(time.perf_counter() - start)
    for group in groups:
        group.close()
    if proc.wait(60) != 0:
        return 1
    mbytes = sum(t.numel() * t.element_size() for t in weights.values()) / 1e6
    result = {"bench": "weight_plane", "mbytes": round(mbytes, 2),
              "bucket_mb": args.bucket_mb, "sessions": args.sessions}
    for plane, xs in times.items():
        result[plane] = {"median_ms": round(statistics.median(xs) * 1e3, 3),
                         "mean_ms": round(statistics.mean(xs) * 1e3, 3)}
        print(f"  {plane:14s} median {statistics.median(xs) * 1e3:.2f} ms, mean "
              f"{statistics.mean(xs) * 1e3:.2f} ms (send -> loaded, {len(xs)} sessions)")
    result["ratio"] = round(result["shared_memory"]["median_ms"]
                            / result["broadcast"]["median_ms"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
