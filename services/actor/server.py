"""`quartet serve actor`: the policy on DeepSpeed (flags: `--model.*`, `--ds.*`, `--adam.*`,
`--optim`, `--train.*`; see `quartet serve actor --help`)."""

from __future__ import annotations

import argparse

from quartet.heap import release_free_heap
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.training_role import add_save_root_argument
from quartet.serving import RoleServer

ROLE_CONFIG = TrainingRoleConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Role flags come from TrainingRoleConfig (see quartet.cli.main); the server's own:"""
    add_save_root_argument(parser)


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import actor_pb2_grpc
    from services.actor.actor import Actor
    from services.actor.servicer import ActorServicer

    actor = Actor(args.role_config)
    release_free_heap()  # what loading and converting the model freed
    actor_pb2_grpc.add_ActorServicer_to_server(ActorServicer(actor, save_root=args.save_root),
                                               server.grpc_server)
    # Constructing the engine is collective, so every rank has joined by now.
    server.on_stop(actor.stop_workers)
    server.set_serving(True)


def serve_rank(args: argparse.Namespace) -> int:
    """Ranks > 0 of a multi-rank actor: no gRPC port; serve rank 0's fanned-out calls."""
    from services.actor.actor import Actor

    return Actor(args.role_config).serve_worker()
