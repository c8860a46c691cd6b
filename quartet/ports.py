"""Picking a TCP port for a server another process will open."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host`, for a server started next (a TCPStore, redis-server,
    a role's gRPC port). Bound and released here, so another process could take it before
    the server binds it: where a server can bind port 0 and report its port, let it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
