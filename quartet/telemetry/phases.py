"""Spans of the PPO loop, as context managers the loop wraps its phases in.

One trace per iteration: `iteration_trace` opens a root span (a new trace id) and each
`PhaseTimer` phase is its child, so every RPC a phase makes (client span, then the service's
server span) hangs under it. The loop keeps only `with` statements; span details live here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from quartet.telemetry.tracing import tracer

# Metrics copied onto the iteration span (so a trace viewer shows them without the jsonl).
ITERATION_ATTRIBUTES = ("reward", "kl", "response_length", "policy_version", "train_steps")


class PhaseTimer:
    """Times named phases (seconds accumulate per name) and traces each as a span."""

    def __init__(self, **attributes: Any) -> None:
        self.seconds: dict[str, float] = {}
        self.attributes = {f"quartet.{k}": v for k, v in attributes.items()}
        self._span: trace.Span | None = None

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        with tracer().start_as_current_span(phase, attributes=self.attributes) as span:
            self._span = span
            try:
                yield
            finally:
                self._span = None
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def annotate(self, **attributes: Any) -> None:
        """Adds attributes (e.g. rows=64) to the phase that is open now."""
        if self._span is not None:
            for k, v in attributes.items():
                self._span.set_attribute(f"quartet.{k}", v)


class IterationSpan:
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def record(self, metrics: Mapping[str, float]) -> None:
        for key in ITERATION_ATTRIBUTES:
            if key in metrics:
                self.span.set_attribute(f"quartet.{key}", float(metrics[key]))


@contextmanager
def iteration_trace(run_id: str, iteration: int, policy_version: int) -> Iterator[IterationSpan]:
    """The root span of one PPO iteration: a fresh trace, whatever context is current."""
    attrs = {"quartet.run_id": run_id, "quartet.iteration": iteration,
             "quartet.policy_version": policy_version}
    with tracer().start_as_current_span("iteration", context=otel_context.Context(),
                                        attributes=attrs) as span:
        yield IterationSpan(span)
