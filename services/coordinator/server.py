"""`quartet serve coordinator`: PPO runs as a service. StartRun takes the run's config as
YAML (the `quartet ppo` flags, nested or dotted); GetRun/WatchRun report progress; StopRun
ends a run after its current iteration with a final checkpoint. SIGTERM/SIGINT stop every
active run the same way, and the role processes it started, before the service exits 0."""

from __future__ import annotations

import argparse

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No engine flags: each run brings its own configuration; these bound what it may do."""
    parser.add_argument("--allowed-reward-dir", action="append", default=[], metavar="DIR",
                        help="reward code (reward.func) of a StartRun config runs only from "
                             "these directories (repeatable; default: none)")
    parser.add_argument("--runs-root", default=".",
                        help="a run's ckpt.output_dir must lie under this directory "
                             "(relative ones resolve against it; default: working directory)")


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import coordinator_pb2_grpc
    from services.coordinator.runs import RunManager
    from services.coordinator.servicer import CoordinatorServicer

    runs = RunManager(allowed_reward_dirs=args.allowed_reward_dir, runs_root=args.runs_root)
    server.add_stop_hook(lambda: runs.shutdown("the coordinator service is stopping"))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(runs),
                                                           server.grpc_server)
    server.set_serving(True)
