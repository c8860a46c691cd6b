"""`quartet serve critic`: the value model on DeepSpeed (flags as the actor's; point
`--model.model_name_or_path` at a reward model to initialise from it)."""

from __future__ import annotations

import argparse

from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.training_role import add_save_root_argument
from quartet.serving import RoleServer

ROLE_CONFIG = TrainingRoleConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Role flags come from TrainingRoleConfig (see quartet.cli.main); the server's own:"""
    add_save_root_argument(parser)


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import critic_pb2_grpc
    from services.critic.critic import Critic
    from services.critic.servicer import CriticServicer

    critic = Critic(args.role_config)
    critic_pb2_grpc.add_CriticServicer_to_server(CriticServicer(critic, save_root=args.save_root),
                                               server.grpc_server)
    # Constructing the engine is collective, so every rank has joined by now.
    server.on_stop(critic.stop_workers)
    server.set_serving(True)


def serve_rank(args: argparse.Namespace) -> int:
    """Ranks > 0 of a multi-rank critic: no gRPC port; serve rank 0's fanned-out calls."""
    from services.critic.critic import Critic

    return Critic(args.role_config).serve_worker()
