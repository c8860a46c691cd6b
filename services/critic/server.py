"""`quartet serve critic`: contract only for now; the engine arrives with the PPO issue.

Every RPC answers UNIMPLEMENTED (never a fake result) until then.
"""

from __future__ import annotations

import argparse

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF model directory")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import critic_pb2_grpc

    critic_pb2_grpc.add_CriticServicer_to_server(critic_pb2_grpc.CriticServicer(),
                                                 server.grpc_server)
    server.set_serving(True)
