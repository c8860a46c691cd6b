"""Fan metrics out to every configured sink, on rank 0 only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quartet.config.logger import LoggerConfig
from quartet.tracking.jsonl import JsonlWriter
from quartet.tracking.progress import ProgressBar

__all__ = ["Tracker"]


class Tracker:
    """``log(metrics, step)`` to jsonl, TensorBoard and W&B; ``advance`` moves the bar."""

    def __init__(self, cfg: LoggerConfig, output_dir: str, run_name: str, total_steps: int,
                 initial_step: int, is_main: bool, config: dict[str, Any] | None = None,
                 default_jsonl: bool = True, bar: bool = True) -> None:
        """``default_jsonl=False``: write jsonl only to an explicit ``--logger.metrics_file``
        (for a caller that writes ``<output_dir>/metrics.jsonl`` itself); ``bar=False``: no
        tqdm bar (for a caller with its own progress display)."""
        self.is_main = is_main
        self.sinks: list[Any] = []
        self.bar = ProgressBar(total_steps, initial_step, run_name,
                               enabled=bar and is_main and cfg.progress_bar_enable)
        self.history: list[dict[str, Any]] = []
        self.started = time.time()
        if not is_main:
            return
        out = Path(output_dir)
        if cfg.metrics_file or default_jsonl:
            self.sinks.append(JsonlWriter(cfg.metrics_file or out / "metrics.jsonl"))
        tb = cfg.tensorboard_dir or str(out / "tensorboard")
        if tb.lower() != "none":
            from quartet.tracking.tensorboard import TensorBoardWriter

            self.sinks.append(TensorBoardWriter(tb))
        if cfg.wandb.key:
            from quartet.tracking.wandb_writer import WandbWriter

            self.sinks.append(WandbWriter(cfg.wandb, run_name, config or {}))

    def advance(self, metrics: dict[str, Any]) -> None:
        self.bar.update(metrics)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_main:
            return
        self.history.append({"step": step, **metrics})
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        self.bar.close()
        for sink in self.sinks:
            sink.close()
