"""The fixed role words of quartet and where each role's server module lives."""

from __future__ import annotations

import importlib
from types import ModuleType

ROLES: tuple[str, ...] = ("actor", "critic", "reward", "reference", "rollout", "coordinator")

# Default loopback ports when a user runs services by hand (embedded mode uses free ports).
DEFAULT_PORTS: dict[str, int] = {
    "actor": 50051,
    "critic": 50052,
    "reward": 50053,
    "reference": 50054,
    "rollout": 50061,
    "coordinator": 50050,
}

# Full gRPC service name of each role's contract.
SERVICE_NAMES: dict[str, str] = {
    "actor": "quartet.v1.Actor",
    "critic": "quartet.v1.Critic",
    "reward": "quartet.v1.Reward",
    "reference": "quartet.v1.Reference",
    "rollout": "quartet.v1.Rollout",
    "coordinator": "quartet.v1.Coordinator",
}


def server_module(role: str) -> ModuleType:
    """`services.<role>.server`, which defines `add_arguments(parser)` and `serve(args, server)`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return importlib.import_module(f"services.{role}.server")
