"""What a `quartet serve` process adds around its RoleServer: where its spans go and, in
cluster mode, its registration in the registry. Flags are declared and read here, once."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from quartet.serving.server import RoleServer

log = logging.getLogger("quartet.serving")


def add_presence_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tracing and registry")
    g.add_argument("--replica-id", default=None,
                   help="this replica's id in traces and the registry (default: host:port)")
    g.add_argument("--trace.otlp_endpoint", dest="trace_otlp_endpoint", default=None,
                   help="OTLP collector for spans (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
    g.add_argument("--trace.file", dest="trace_file", default=None,
                   help="append spans as JSONL here when no OTLP endpoint is set")
    g.add_argument("--registry", default=os.environ.get("QUARTET_REGISTRY") or None,
                   metavar="redis://host:port/db",
                   help="register this service (address, weight version, health, load) "
                        "with a TTL heartbeat; deregister on stop (default: "
                        "$QUARTET_REGISTRY)")
    g.add_argument("--registry-ttl-s", type=float, default=10.0,
                   help="registration expires this long after the last heartbeat")
    g.add_argument("--advertise-address", default=None,
                   help="host:port others reach this service at (default: the bind host, "
                        "or this host's IP when bound to 0.0.0.0)")


def advertised_address(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Presence:
    """Tracing configured at start; the registry heartbeat once the server listens."""

    def __init__(self, args: argparse.Namespace, role: str, server: RoleServer) -> None:
        from quartet.telemetry import configure_tracing

        self.address = args.advertise_address or advertised_address(server.host, server.port)
        self.replica = args.replica_id or self.address
        where = configure_tracing(role, self.replica, args.trace_otlp_endpoint, args.trace_file)
        log.info("%s replica %s: traces -> %s", role, self.replica, where)
        self.heartbeat = None
        if args.registry:
            from quartet.registry import Registry, RegistryHeartbeat

            self.heartbeat = RegistryHeartbeat(
                Registry(args.registry), role, self.replica, self.address,
                serving=lambda: server.serving, info=server.local_info,
                ttl_s=args.registry_ttl_s).start()

    def close(self) -> None:
        from quartet.telemetry import shutdown_tracing

        if self.heartbeat is not None:
            self.heartbeat.stop()
        shutdown_tracing()
