"""What a `quartet ppo` run reports besides its metrics: where its spans go, and (cluster
mode) its state in the registry for `quartet runs`. Fed by the loop's events, so the loop
itself knows nothing of Redis or exporters."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from quartet.registry import Registry
from quartet.telemetry import configure_tracing, shutdown_tracing
from services.coordinator.config import PPOJobConfig

log = logging.getLogger("quartet.coordinator")


class RunStateRecorder:
    """`on_event` consumer: status, iteration, policy version, last checkpoint."""

    def __init__(self, registry: Registry, run_id: str, output_dir: str,
                 num_iterations: int) -> None:
        self.registry = registry
        self.run_id = run_id
        self.write(status="starting", output_dir=output_dir, iteration=0,
                   num_iterations=num_iterations, policy_version=0)

    def write(self, **state: Any) -> None:
        try:
            self.registry.write_run(self.run_id, **state)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the state is advisory
            log.warning("registry %s: could not record run state: %s", self.registry.url, exc)

    def __call__(self, event: dict[str, Any]) -> None:
        phase = event["phase"]
        if phase == "done":
            m = event["metrics"]
            self.write(status="running", iteration=int(m["iteration"]),
                       policy_version=int(m["policy_version"]), reward=m.get("reward"))
        elif phase == "checkpoint":
            self.write(last_checkpoint=event["path"])
        else:
            self.write(status="running", phase=phase)


class RunTelemetry:
    """A context manager around a run: tracing configured on entry (the coordinator's spans,
    `<output_dir>/trace.jsonl` or OTLP), run state recorded in the registry when there is
    one, and on exit the final status (finished / stopped / failed) and flushed spans."""

    def __init__(self, cfg: PPOJobConfig, run_id: str,
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.stop = stop
        self.recorder: RunStateRecorder | None = None
        self.where = "off"

    def __enter__(self) -> RunTelemetry:
        cfg = self.cfg
        otlp, trace_file = cfg.trace.targets(cfg.ckpt.output_dir)
        self.where = configure_tracing("coordinator", self.run_id, otlp, trace_file)
        if cfg.cluster.registry:
            self.recorder = RunStateRecorder(
                Registry(cfg.cluster.registry), self.run_id,
                str(Path(cfg.ckpt.output_dir).resolve()), cfg.train.num_iterations)
        return self

    def on_event(self, event: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder(event)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.recorder is not None:
            stopped = self.stop is not None and self.stop.is_set()
            status = "failed" if exc_type else "stopped" if stopped else "finished"
            self.recorder.write(status=status, phase="")
            self.recorder.registry.close()
        shutdown_tracing()
