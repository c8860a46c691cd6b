"""`quartet serve actor`: contract only for now; the engine arrives with the PPO issue.

Every RPC answers UNIMPLEMENTED (never a fake result) until then.
"""

from __future__ import annotations

import argparse

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF model directory")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import actor_pb2_grpc

    actor_pb2_grpc.add_ActorServicer_to_server(actor_pb2_grpc.ActorServicer(),
                                                 server.grpc_server)
    server.set_serving(True)
