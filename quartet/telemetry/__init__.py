"""Observability shared by every process: OpenTelemetry tracing (setup, exporters, gRPC
interceptors, phase spans) and the readers behind `quartet trace`."""

from quartet.telemetry.context import ContextThreadPoolExecutor
from quartet.telemetry.phases import PhaseTimer, iteration_trace
from quartet.telemetry.tracing import configure_tracing, shutdown_tracing, tracer

__all__ = [
    "ContextThreadPoolExecutor",
    "PhaseTimer",
    "configure_tracing",
    "iteration_trace",
    "shutdown_tracing",
    "tracer",
]
