"""``--trace.*`` and ``--registry``: where spans go and where services find each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quartet.config.base import check


@dataclass(frozen=True)
class TraceConfig:
    """OpenTelemetry traces: one trace per PPO iteration, spans from every service."""

    otlp_endpoint: str | None = None
    """OTLP collector (e.g. http://otel-collector:4317); default: the standard
    OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables. When set, spans go there, not to the file."""
    file: str | None = None
    """JSONL span file shared by the coordinator and the services it starts (default:
    ``<ckpt.output_dir>/trace.jsonl``); ``none`` turns tracing off."""

    def targets(self, output_dir: str) -> tuple[str | None, str | None]:
        """(OTLP endpoint or None, JSONL file or None) for a job writing to `output_dir`.
        The OTLP endpoint may also come from the OTEL_* environment (see tracing)."""
        from quartet.telemetry.tracing import otlp_endpoint_from_env

        otlp = self.otlp_endpoint or otlp_endpoint_from_env()
        if otlp or (self.file or "").lower() == "none":
            return otlp, None
        return None, self.file or str(Path(output_dir) / "trace.jsonl")


@dataclass(frozen=True)
class RegistryConfig:
    """Service discovery and run state in Redis (cluster mode)."""

    registry: str | None = None
    """redis://host:port/db: services register there and the coordinator discovers the roles
    that have no --<role>.address from it, notices rollout replicas coming and going between
    iterations, and writes the run's state. Empty: static addresses / embedded mode."""

    def __post_init__(self) -> None:
        if self.registry:
            check(self.registry.startswith(("redis://", "rediss://", "unix://")), "registry",
                  f"expected redis://host:port/db, got {self.registry!r}")
