"""`quartet serve reward`: a reward model, a rule-based reward function file, or a proxy to an
OpenRLHF-style HTTP reward server (`--remote-url`).

A reward model (`--model`) runs one rank, or N ranks behind rank 0's endpoint (`WORLD_SIZE`,
as the reference): rows are split over the ranks, and `--zero-stage 3` also shards the
weights over them. The other sources run one rank."""

from __future__ import annotations

import argparse
import os

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="sequence-regression reward model directory (HF)")
    source.add_argument("--reward-func", metavar="FILE.py",
                        help="Python file defining reward_func(queries, prompts, labels)")
    source.add_argument("--prm-model", metavar="DIR",
                        help="process reward model trained by train_prm: per-step scores, "
                             "reward = the lowest step score")
    source.add_argument("--remote-url", metavar="URL",
                        help="proxy to an OpenRLHF-style HTTP reward server: POST "
                             "{query, prompts, labels} -> {rewards, scores?, extra_logs?}")
    remote = parser.add_argument_group("remote HTTP reward (--remote-url)")
    remote.add_argument("--remote-timeout-s", type=float, default=30.0,
                        help="per-attempt timeout in seconds (default 30)")
    remote.add_argument("--remote-retries", type=int, default=3,
                        help="retries after the first attempt on connection errors, "
                             "timeouts, 5xx and 429; never on other 4xx (default 3)")
    remote.add_argument("--remote-batch-size", type=int, default=0,
                        help="rows per HTTP request; 0 sends each scored slice whole (default)")
    remote.add_argument("--remote-concurrency", type=int, default=4,
                        help="HTTP requests in flight at once when a slice is split (default 4)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: best; with several ranks, "
                             "LOCAL_RANK's device)")
    parser.add_argument("--offload", action="store_true",
                        help="keep the reward model on CPU between calls (ZeRO-3: its "
                             "partitions; --model only)")
    parser.add_argument("--zero-stage", type=int, default=0, choices=[0, 3],
                        help="3 shards the reward model's weights over this role's ranks "
                             "(ZeRO-3 inference; --model only)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--use-token-ids", action="store_true",
                        help="score the actor's token ids (same tokenizer) instead of the text")


def build_reward(args: argparse.Namespace):
    if not args.model:
        if args.offload:
            raise ValueError("--offload: applies to a reward model (--model) only")
        if args.zero_stage:
            raise ValueError("--zero-stage: applies to a reward model (--model) only")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            raise ValueError(f"WORLD_SIZE={world_size}: only a reward model (--model) runs "
                             "several ranks; a rule, PRM or HTTP reward runs one")
    if getattr(args, "remote_url", None):
        from quartet.rewards.http import RemoteHTTPReward

        return (RemoteHTTPReward(args.remote_url, timeout_s=args.remote_timeout_s,
                                 max_retries=args.remote_retries,
                                 batch_size=args.remote_batch_size,
                                 concurrency=args.remote_concurrency), "http")
    if args.reward_func:
        from quartet.rewards.rule import RuleReward

        return RuleReward(args.reward_func), "rule"
    if getattr(args, "prm_model", None):
        from quartet.rewards.prm import ProcessReward

        return (ProcessReward(args.prm_model, args.dtype, args.device, args.micro_batch_size,
                              args.max_len), "prm")
    from quartet.rewards.model import SequenceRegressionReward

    return (SequenceRegressionReward(args.model, args.dtype, args.device, args.micro_batch_size,
                                     args.max_len, args.use_token_ids, args.offload,
                                     args.zero_stage),
            "transformers")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import reward_pb2_grpc
    from services.reward.servicer import RewardServicer

    reward, backend = build_reward(args)
    reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(reward, backend),
                                                 server.grpc_server)
    if hasattr(reward, "stop_workers"):
        # Loading is collective with several ranks, so every rank has joined by now.
        server.on_stop(reward.stop_workers)
    server.set_serving(True)


def serve_rank(args: argparse.Namespace) -> int:
    """Ranks > 0 of a reward model: no gRPC port; serve rank 0's fanned-out calls."""
    reward, _ = build_reward(args)
    return reward.serve_worker()
