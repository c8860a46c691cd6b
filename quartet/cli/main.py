"""The `quartet` command: `quartet serve <role>`, `quartet ppo`, and the trainers.

Subcommands are thin: each resolves its flags and hands over to the module that does the
work, so `python -m quartet.cli.train_sft` and `quartet sft` run the same code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

from quartet.logs import setup_logging
from quartet.roles import DEFAULT_PORTS, ROLES, server_module
from quartet.security import (
    TOKEN_ENV,
    SecurityConfigError,
    ServerSecurity,
    add_server_security_arguments,
)

log = logging.getLogger("quartet.cli")

# Subcommands that forward their arguments to another module's main(argv).
FORWARDED = {
    "sft": "quartet.cli.train_sft",
    "rm": "quartet.cli.train_rm",
    "dpo": "quartet.cli.train_dpo",
    "ppo": "services.coordinator.job",
    "kto": "quartet.cli.train_kto",
    "kd": "quartet.cli.train_kd",
    "prm": "quartet.cli.train_prm",
    "batch_inference": "quartet.cli.batch_inference",
    "rs": "quartet.cli.rs",
    "iterative_dpo": "quartet.cli.iterative_dpo",
    "lora-combine": "quartet.cli.lora_combiner",
    "trace": "quartet.cli.trace",
    "runs": "quartet.cli.runs",
}


def parse_serve_args(role: str, argv: list[str]):
    """The role's server module and its parsed `quartet serve <role>` flags (also used to
    host a role in-process, e.g. by the fuzz tests)."""
    from quartet.serving.presence import add_presence_arguments

    module = server_module(role)
    parser = argparse.ArgumentParser(prog=f"quartet serve {role}")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORTS[role],
                        help=f"port (default {DEFAULT_PORTS[role]}; 0 picks a free one)")
    parser.add_argument("--max-message-mb", type=int, default=64,
                        help="largest gRPC message accepted or sent, in MiB")
    parser.add_argument("--port-file", default=None,
                        help="write the bound port to this file once listening (for launchers)")
    add_server_security_arguments(parser)
    add_presence_arguments(parser)
    module.add_arguments(parser)
    role_config_cls = getattr(module, "ROLE_CONFIG", None)
    if role_config_cls is None:
        args = parser.parse_args(argv)
    else:
        # Roles with a typed config (actor, critic) take its generated hierarchical flags
        # (--model.*, --ds.*, ...) after the server's own flags.
        from quartet.config.base import parse_config

        if any(a in ("-h", "--help") for a in argv):
            parser.print_help()
            print(f"\n{role} flags:")
            parse_config(role_config_cls, ["--help"], prog=f"quartet serve {role}")
        args, extra = parser.parse_known_args(argv)
        args.role_config = parse_config(role_config_cls, extra, prog=f"quartet serve {role}")
    return module, args


def serve(argv: list[str]) -> int:
    """Start one role's gRPC server in this process and block until SIGTERM/SIGINT."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: quartet serve {" + ",".join(ROLES) + "} --port N [--host H] [role flags]")
        print("       quartet serve <role> --help   lists that role's flags")
        return 0 if argv else 2
    from quartet.launch.parent_death import arm_from_env

    arm_from_env()
    role, rest = argv[0], argv[1:]
    if role not in ROLES:
        print(f"quartet serve: unknown role {role!r}; expected one of {', '.join(ROLES)}",
              file=sys.stderr)
        return 2
    module, args = parse_serve_args(role, rest)

    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not hasattr(module, "serve_rank"):
        print(f"quartet serve {role}: runs one rank, but WORLD_SIZE={world_size}; only the "
              "actor, critic, reference and reward (a model) serve several ranks", file=sys.stderr)
        return 2
    if rank > 0:
        return _serve_rank(role, module, args, rank)
    setup_logging(role)
    from quartet.serving import RoleServer
    from quartet.serving.presence import Presence

    try:
        security = ServerSecurity.from_args(args)
    except SecurityConfigError as exc:
        print(f"quartet serve {role}: error: {exc}", file=sys.stderr)
        return 2
    if args.auth_token_file:
        # Clients this service makes (the coordinator's) present the same token.
        os.environ[TOKEN_ENV] = args.auth_token_file
    server = RoleServer(role, host=args.host, port=args.port,
                        max_message_bytes=args.max_message_mb << 20, security=security)
    server.start()
    presence = Presence(args, role, server)
    server.install_signal_handlers()
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{server.port}\n")
    print(f"quartet {role} listening on {server.address}", flush=True)

    failure: list[BaseException] = []

    def _load() -> None:
        try:
            module.serve(args, server)
        except BaseException as exc:  # noqa: BLE001 - reported, then the process exits 1
            failure.append(exc)
            log.error("%s failed to start: %s", role, exc, exc_info=True)
            server.stop(0)

    loader = threading.Thread(target=_load, name=f"{role}-load", daemon=True)
    loader.start()
    server.wait_for_termination()
    presence.close()
    code = 1 if failure else 0
    # The server has drained; skip interpreter teardown, where native extensions loaded by
    # the engines (vLLM's triton) print leak reports and take seconds to unload.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve_rank(role: str, module, args: argparse.Namespace, rank: int) -> int:
    """Rank > 0 of a multi-rank role: no port; serve rank 0's calls until it stops or dies."""
    setup_logging(f"{role}[{rank}]")
    log.info("%s rank %d: joining rank 0 at %s:%s", role, rank, os.environ.get("MASTER_ADDR"),
             os.environ.get("MASTER_PORT"))
    try:
        code = module.serve_rank(args)
    except BaseException as exc:  # noqa: BLE001 - reported, then the process exits 1
        log.error("%s rank %d failed: %s", role, rank, exc, exc_info=True)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("\nusage: quartet <command> [args]\n\ncommands:")
        print("  serve <role>   run one role's gRPC server (" + ", ".join(ROLES) + ")")
        for name, module in FORWARDED.items():
            print(f"  {name:<16} same as python -m {module}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        return serve(rest)
    if command in FORWARDED:
        try:
            module = importlib.import_module(FORWARDED[command])
        except ModuleNotFoundError as exc:
            if exc.name == FORWARDED[command]:
                print(f"quartet {command}: not available in this build", file=sys.stderr)
                return 2
            raise
        return int(module.main(rest) or 0)
    print(f"quartet: unknown command {command!r} (try quartet --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
