"""The coordinator role's domain object: PPO runs started over gRPC, their state and events.

A run is `quartet ppo` in a background thread: the same `run()` the CLI calls, with its
phase events recorded for GetRun/WatchRun and a stop flag for StopRun. One run at a time:
the roles it starts (or drives) are not shared between runs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from quartet.config.base import (
    ConfigError,
    dict_to_argv,
    flatten_mapping,
    parse_config_or_raise,
)
from quartet.serving.errors import InvalidArgument, NotFound, ResourceExhausted
from quartet.serving.paths import allowed_file, confine
from services.coordinator.config import PPOJobConfig

log = logging.getLogger("quartet.coordinator")

PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
TERMINAL = (SUCCEEDED, FAILED, STOPPED)


@dataclass
class RunEvent:
    iteration: int
    phase: str
    state: str
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass
class Run:
    run_id: str
    config: PPOJobConfig
    state: str = PENDING
    iteration: int = 0
    policy_version: int = 0
    message: str = ""
    last_metrics: dict[str, float] = field(default_factory=dict)
    events: list[RunEvent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    started: float = field(default_factory=time.monotonic)

    @property
    def total_iterations(self) -> int:
        return self.config.train.num_iterations


def parse_run_config(config_yaml: str) -> PPOJobConfig:
    try:
        values = yaml.safe_load(config_yaml) if config_yaml.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"config_yaml: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise InvalidArgument("config_yaml: expected a mapping of quartet ppo flags")
    try:
        return parse_config_or_raise(PPOJobConfig,
                                     dict_to_argv(PPOJobConfig, flatten_mapping(values)))
    except ConfigError as exc:
        raise InvalidArgument(f"config_yaml: {exc.reason if exc.field == 'config' else exc}"
                              ) from None


def confine_run_config(config: PPOJobConfig, allowed_reward_dirs: Sequence[str],
                       runs_root: str | None) -> PPOJobConfig:
    """A StartRun config limited to what this coordinator allows: reward code only from
    `allowed_reward_dirs`, output only under `runs_root` (paths come back resolved)."""
    funcs = tuple(str(allowed_file(f, allowed_reward_dirs, f"reward.func[{i}]",
                                   "--allowed-reward-dir"))
                  for i, f in enumerate(config.reward.func))
    ckpt = config.ckpt
    if runs_root is not None:
        ckpt = replace(ckpt, output_dir=str(confine(ckpt.output_dir, runs_root,
                                                    "ckpt.output_dir")),
                       path=str(confine(ckpt.path, runs_root, "ckpt.path")) if ckpt.path
                       else None)
    return replace(config, reward=replace(config.reward, func=funcs), ckpt=ckpt)


class RunManager:
    def __init__(self, runner=None, allowed_reward_dirs: Sequence[str] | None = None,
                 runs_root: str | None = None) -> None:
        """`allowed_reward_dirs` None: no check (in-process use); the service passes its
        flags (an empty list: no reward code allowed)."""
        if runner is None:
            from services.coordinator.job import run as runner
        self.runner = runner
        self.allowed_reward_dirs = allowed_reward_dirs
        self.runs_root = runs_root
        self.runs: dict[str, Run] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()

    def start(self, config_yaml: str, run_id: str = "") -> Run:
        config = parse_run_config(config_yaml)
        if self.allowed_reward_dirs is not None:
            config = confine_run_config(config, self.allowed_reward_dirs, self.runs_root)
        with self.lock:
            active = [r for r in self.runs.values() if r.state not in TERMINAL]
            if active:
                raise ResourceExhausted(f"run {active[0].run_id!r} is {active[0].state}; one "
                                        "run at a time (StopRun it or wait)")
            run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
            if run_id in self.runs:
                raise InvalidArgument(f"run_id: {run_id!r} already exists")
            run = Run(run_id, config)
            self.runs[run_id] = run
            thread = threading.Thread(target=self._execute, args=(run,), name=f"run-{run_id}",
                                      daemon=True)
            self.threads[run_id] = thread
        thread.start()
        return run

    def get(self, run_id: str) -> Run:
        try:
            return self.runs[run_id]
        except KeyError:
            raise NotFound(f"run_id: no run {run_id!r}") from None

    def stop(self, run_id: str, reason: str = "") -> Run:
        run = self.get(run_id)
        run.stop.set()
        self._record(run, RunEvent(run.iteration, "stop", run.state,
                                   message=reason or "stop requested"))
        return run

    def shutdown(self, reason: str) -> None:
        """Stops every active run and waits until each has saved its checkpoint and stopped
        the role processes it started."""
        active = [r for r in self.runs.values() if r.state not in TERMINAL]
        for run in active:
            self.stop(run.run_id, reason)
        for run in active:
            log.info("waiting for run %s to finish its iteration and save", run.run_id)
            self.threads[run.run_id].join()

    def watch(self, run_id: str, is_active=lambda: True) -> Iterator[RunEvent]:
        """Every event of the run so far, then new ones until it ends (or the client leaves)."""
        run = self.get(run_id)
        sent = 0
        while True:
            with run.changed:
                while sent == len(run.events) and run.state not in TERMINAL and is_active():
                    run.changed.wait(timeout=1.0)
                pending = run.events[sent:]
                done = run.state in TERMINAL
            yield from pending
            sent += len(pending)
            if (done and sent == len(run.events)) or not is_active():
                return

    # ---------------------------------------------------------------- execution
    def _record(self, run: Run, event: RunEvent) -> None:
        with run.changed:
            run.events.append(event)
            run.changed.notify_all()

    def _on_event(self, run: Run, event: dict[str, Any]) -> None:
        metrics = event.get("metrics") or {}
        run.iteration = int(metrics.get("iteration", event["iteration"]))
        if metrics:
            run.last_metrics = {k: float(v) for k, v in metrics.items()}
            run.policy_version = int(metrics.get("policy_version", run.policy_version))
        seconds = sum(v for k, v in metrics.items() if k.startswith("time/"))
        self._record(run, RunEvent(event["iteration"], event["phase"], run.state, seconds,
                                   run.last_metrics if metrics else {}))

    def _execute(self, run: Run) -> None:
        run.state = RUNNING
        self._record(run, RunEvent(0, "start", RUNNING, message="starting roles"))
        try:
            self.runner(run.config, run.run_id, on_event=lambda e: self._on_event(run, e),
                        stop=run.stop)
            run.state = STOPPED if run.stop.is_set() else SUCCEEDED
            run.message = f"{run.iteration} iterations in {time.monotonic() - run.started:.0f}s"
        except Exception as exc:  # noqa: BLE001 - the run's failure is its state, not ours
            log.exception("run %s failed", run.run_id)
            run.state, run.message = FAILED, f"{type(exc).__name__}: {exc}"
        self._record(run, RunEvent(run.iteration, "done", run.state, message=run.message))
