"""`quartet serve reward`: a reward model or a rule-based reward function file."""

from __future__ import annotations

import argparse

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="sequence-regression reward model directory (HF)")
    source.add_argument("--reward-func", metavar="FILE.py",
                        help="Python file defining reward_func(queries, prompts, labels)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--use-token-ids", action="store_true",
                        help="score the actor's token ids (same tokenizer) instead of the text")


def build_reward(args: argparse.Namespace):
    if args.reward_func:
        from quartet.rewards.rule import RuleReward

        return RuleReward(args.reward_func), "rule"
    from quartet.rewards.model import SequenceRegressionReward

    return (SequenceRegressionReward(args.model, args.dtype, args.device, args.micro_batch_size,
                                     args.max_len, args.use_token_ids), "transformers")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import reward_pb2_grpc
    from services.reward.servicer import RewardServicer

    reward, backend = build_reward(args)
    reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(reward, backend),
                                                 server.grpc_server)
    server.set_serving(True)
