"""`quartet serve reward`: a reward model, a rule-based reward function file, or a proxy to an
OpenRLHF-style HTTP reward server (`--remote-url`)."""

from __future__ import annotations

import argparse

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
    parser.add_argument("--device", default=None)
    parser.add_argument("--offload", action="store_true",
                        help="keep the reward model on CPU between calls (--model only)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--use-token-ids", action="store_true",
                        help="score the actor's token ids (same tokenizer) instead of the text")


def build_reward(args: argparse.Namespace):
    if args.offload and not args.model:
        raise ValueError("--offload: applies to a reward model (--model) only")
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
                                     args.max_len, args.use_token_ids, args.offload),
            "transformers")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import reward_pb2_grpc
    from services.reward.servicer import RewardServicer

    reward, backend = build_reward(args)
    reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(reward, backend),
                                                 server.grpc_server)
    server.set_serving(True)
